-- Version 3: autovacuum that keeps up with the history tables at thousands of runs a second.
-- With the defaults (vacuum after 20 % of a table changed, with cost-based sleeping), dead
-- tuples in `runs` climbed past 200k once it held a million rows, and throughput fell to 70 %
-- of the first minute's in a 10-minute soak; with these it stayed under 30k and the last
-- minute ran at 111 % of the first (bench/README.md).
ALTER TABLE runs SET (
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0);
ALTER TABLE run_steps SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0);
ALTER TABLE run_logs SET (
    autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_vacuum_cost_delay = 0);
