//! Stand-alone sandbox worker, used by this crate's tests (the server runs `weft sandbox-worker`).

fn main() -> std::io::Result<()> {
    weft_sandbox::worker_main(512 * 1024 * 1024)
}
