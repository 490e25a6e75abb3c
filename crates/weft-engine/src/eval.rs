//! Expression evaluation: the in-process fast path when the filter is proven bounded, the
//! sandbox worker processes otherwise.

use std::borrow::Cow;

use serde_json::Value;
use weft_expr::{Expr, Limits, Part, TValue};

use crate::Inner;

/// What an expression evaluates over: a plain value, or a step's context assembled from
/// borrowed parts (which the fast path reads without building it).
pub(crate) trait EvalInput: Sync {
    /// The context as borrowed parts, when it is assembled from them.
    fn parts(&self) -> Option<Vec<(&str, Part<'_>)>> {
        None
    }
    /// The whole value (built, for the sandbox, when it is assembled from parts).
    fn value(&self) -> Cow<'_, Value>;
}

impl EvalInput for Value {
    fn value(&self) -> Cow<'_, Value> {
        Cow::Borrowed(self)
    }
}

impl Inner {
    /// Evaluates one expression to one value; the error names the expression.
    pub(crate) async fn eval<C: EvalInput + ?Sized>(
        &self,
        e: &Expr,
        ctx: &C,
    ) -> Result<Value, String> {
        let fast = match ctx.parts() {
            Some(parts) => e.eval_fast_parts(&parts, &Limits::default()),
            None => e.eval_fast(&ctx.value(), &Limits::default()),
        };
        let outs = match fast {
            Some(r) => r.map_err(|err| describe(e, &err.to_string()))?,
            None => {
                let input = ctx.value().into_owned();
                self.opts
                    .sandbox
                    .eval_jq(e.source(), &input)
                    .await
                    .map_err(|err| describe(e, &err.to_string()))?
            }
        };
        weft_expr::single(outs).map_err(|err| describe(e, &err.to_string()))
    }

    /// Renders a templated value.
    pub(crate) async fn render<C: EvalInput + ?Sized>(
        &self,
        t: &TValue,
        ctx: &C,
    ) -> Result<Value, String> {
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
