//! Expression evaluation: the in-process fast path when the filter is proven bounded, the
//! sandbox worker processes otherwise.

use serde_json::Value;
use weft_expr::{Expr, Limits, TValue};

use crate::Inner;

impl Inner {
    /// Evaluates one expression to one value; the error names the expression.
    pub(crate) async fn eval(&self, e: &Expr, ctx: &Value) -> Result<Value, String> {
        let outs = match e.eval_fast(ctx, &Limits::default()) {
            Some(r) => r.map_err(|err| describe(e, &err.to_string()))?,
            None => self
                .opts
                .sandbox
                .eval_jq(e.source(), ctx)
                .await
                .map_err(|err| describe(e, &err.to_string()))?,
        };
        weft_expr::single(outs).map_err(|err| describe(e, &err.to_string()))
    }

    /// Renders a templated value.
    pub(crate) async fn render(&self, t: &TValue, ctx: &Value) -> Result<Value, String> {
        let exprs = t.exprs();
        if exprs.is_empty() {
            return Ok(t.render(&mut std::iter::empty()));
        }
        let mut vals = Vec::with_capacity(exprs.len());
        for e in exprs {
            vals.push(self.eval(e, ctx).await?);
        }
        Ok(t.render(&mut vals.into_iter()))
    }
}

fn describe(e: &Expr, err: &str) -> String {
    let src: String = e.source().chars().take(120).collect();
    format!("expression `{src}` failed: {err}")
}
