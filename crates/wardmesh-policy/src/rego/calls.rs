//! A build-time check regorus leaves to evaluation: every function a policy calls must be
//! a builtin available in the wasm guest (the same regorus build) or a function the
//! policy defines. Otherwise `time.now_ns()` or a misspelt helper would only fail inside
//! the agent, as a `policy_error` on every request that reaches it.

use std::collections::BTreeSet;

use regorus::Engine;
use regorus::unstable::{BUILTINS, Expr, Literal, Module, Query, Ref, Rule, RuleHead};

use super::RegoError;

/// Fails on the first call to a function that is neither a guest builtin nor defined in
/// `engine`'s modules, naming its file, line and column.
pub(super) fn check_calls(engine: &mut Engine) -> Result<(), RegoError> {
    let modules: Vec<Ref<Module>> = engine.get_modules().clone();
    let mut defined = BTreeSet::new();
    for m in &modules {
        for rule in &m.policy {
            match rule.as_ref() {
                Rule::Spec {
                    head: RuleHead::Func { refr, .. },
                    ..
                } => {
                    defined.insert(last_segment(refr.span().text()).to_string());
                }
                Rule::Default { refr, args, .. } if !args.is_empty() => {
                    defined.insert(last_segment(refr.span().text()).to_string());
                }
                _ => {}
            }
        }
    }
    let mut walker = Walker {
        defined: &defined,
        first_unknown: None,
    };
    for m in &modules {
        for rule in &m.policy {
            walker.rule(rule);
        }
    }
    match walker.first_unknown {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn last_segment(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

struct Walker<'a> {
    defined: &'a BTreeSet<String>,
    first_unknown: Option<RegoError>,
}

impl Walker<'_> {
    fn rule(&mut self, rule: &Rule) {
        match rule {
            Rule::Spec { head, bodies, .. } => {
                match head {
                    RuleHead::Compr { refr, assign, .. } => {
                        self.expr(refr);
                        if let Some(a) = assign {
                            self.expr(&a.value);
                        }
                    }
                    RuleHead::Set { refr, key, .. } => {
                        self.expr(refr);
                        if let Some(k) = key {
                            self.expr(k);
                        }
                    }
                    RuleHead::Func { args, assign, .. } => {
                        args.iter().for_each(|a| self.expr(a));
                        if let Some(a) = assign {
                            self.expr(&a.value);
                        }
                    }
                }
                for body in bodies {
                    if let Some(a) = &body.assign {
                        self.expr(&a.value);
                    }
                    self.query(&body.query);
                }
            }
            Rule::Default { value, .. } => self.expr(value),
        }
    }

    fn query(&mut self, q: &Query) {
        for stmt in &q.stmts {
            match &stmt.literal {
                Literal::SomeVars { .. } => {}
                Literal::SomeIn {
                    key,
                    value,
                    collection,
                    ..
                } => {
                    if let Some(k) = key {
                        self.expr(k);
                    }
                    self.expr(value);
                    self.expr(collection);
                }
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => self.expr(expr),
                Literal::Every { domain, query, .. } => {
                    self.expr(domain);
                    self.query(query);
                }
            }
            for w in &stmt.with_mods {
                self.expr(&w.r#as);
            }
        }
    }

    fn expr(&mut self, e: &Expr) {
        if self.first_unknown.is_some() {
            return;
        }
        match e {
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. }
            | Expr::Var { .. } => {}
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                items.iter().for_each(|i| self.expr(i))
            }
            Expr::Object { fields, .. } => {
                for (_, k, v) in fields {
                    self.expr(k);
                    self.expr(v);
                }
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.expr(term);
                self.query(query);
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                self.expr(key);
                self.expr(value);
                self.query(query);
            }
            Expr::Call {
                span, fcn, params, ..
            } => {
                let name = fcn.span().text();
                let known = name == "print"
                    || BUILTINS.contains_key(name)
                    || self.defined.contains(last_segment(name));
                if !known {
                    self.first_unknown = Some(RegoError::Syntax {
                        file: span.source.get_path().clone(),
                        line: span.line,
                        col: span.col,
                        message: format!(
                            "unknown function {name}: neither a builtin of the wasm guest nor defined in this policy"
                        ),
                        detail: span.message("error", &format!("unknown function {name}")),
                    });
                }
                params.iter().for_each(|p| self.expr(p));
            }
            Expr::UnaryExpr { expr, .. } => self.expr(expr),
            Expr::RefDot { refr, .. } => self.expr(refr),
            Expr::RefBrack { refr, index, .. } => {
                self.expr(refr);
                self.expr(index);
            }
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. }
            | Expr::AssignExpr { lhs, rhs, .. } => {
                self.expr(lhs);
                self.expr(rhs);
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(k) = key {
                    self.expr(k);
                }
                self.expr(value);
                self.expr(collection);
            }
        }
    }
}
