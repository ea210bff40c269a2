//! The surface syntax of `recurrence!`: a token-level parser into a small tree that keeps the
//! span of every token, so that later checks can point at the exact token at fault.
//!
//! Parsing is split in two levels. [`parse_headers`] reads the invocation into variant headers
//! (`/// doc`, visibility, name, `{ body }`); one malformed header fails the whole invocation.
//! [`parse_body`] reads one variant's statements; it keeps the statements parsed before a syntax
//! error so the caller can still emit a skeleton of the variant's items next to the error.
//!
//! Rust's own expression grammar is no use here: in Rust `^` binds looser than `*`, so
//! `k * k^T` would parse as `(k * k) ^ T`. The expression grammar below gives the postfix
//! transpose `^T` the tightest binding, as in mathematics.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::{Attribute, Ident, Token, Visibility, braced, bracketed, parenthesized};

/// The first and last span of a piece of syntax; errors underline everything in between.
#[derive(Clone, Copy, Debug)]
pub struct Range {
    /// Span of the first token.
    pub start: Span,
    /// Span of the last token.
    pub end: Span,
}

impl Range {
    /// A range of one token.
    pub fn one(span: Span) -> Self {
        Range {
            start: span,
            end: span,
        }
    }

    /// From the start of `a` to the end of `b`.
    pub fn to(a: Range, b: Range) -> Self {
        Range {
            start: a.start,
            end: b.end,
        }
    }

    /// A `syn::Error` underlining this range.
    pub fn error(self, message: impl std::fmt::Display) -> syn::Error {
        // `new_spanned` takes the first and last token of what it is given; two placeholder
        // tokens carrying our spans make it underline exactly the range, even on stable Rust
        // where spans cannot be joined.
        let mut tokens = TokenStream::new();
        let mut first = proc_macro2::Punct::new('+', proc_macro2::Spacing::Alone);
        first.set_span(self.start);
        let mut last = proc_macro2::Punct::new('+', proc_macro2::Spacing::Alone);
        last.set_span(self.end);
        tokens.extend([TokenTree::Punct(first), TokenTree::Punct(last)]);
        syn::Error::new_spanned(tokens, message)
    }
}

/// One `Name { ... }` of the invocation.
pub struct Header {
    /// Outer attributes (doc comments arrive as `#[doc = "..."]`).
    pub attrs: Vec<Attribute>,
    /// Visibility of the generated items.
    pub vis: Visibility,
    /// The variant's type name (`GatedDeltaNet`).
    pub ident: Ident,
    /// The tokens inside the braces.
    pub body: TokenStream,
}

/// Parses the whole invocation: zero or more variants.
pub fn parse_headers(tokens: TokenStream) -> syn::Result<Vec<Header>> {
    Parser::parse2(
        |input: ParseStream| {
            let mut headers = Vec::new();
            while !input.is_empty() {
                headers.push(parse_header(input)?);
            }
            Ok(headers)
        },
        tokens,
    )
}

fn parse_header(input: ParseStream) -> syn::Result<Header> {
    let attrs = Attribute::parse_outer(input)?;
    let vis: Visibility = input.parse()?;
    if input.peek(Token![struct]) {
        let kw: Token![struct] = input.parse()?;
        return Err(syn::Error::new(
            kw.span,
            "write the variant without `struct`: `pub GatedDeltaNet { inputs { ... } state S: [K, V]; ... }`",
        ));
    }
    if !input.peek(Ident) {
        return Err(input.error(
            "expected a variant: `/// doc` then `pub Name { inputs { ... } state S: [K, V]; S = ...; o = ...; }`",
        ));
    }
    let ident: Ident = input.parse()?;
    if !input.peek(syn::token::Brace) {
        return Err(input.error(format!(
            "expected `{{` after the variant name `{ident}`: its body is `{{ inputs {{ ... }} state S: [K, V]; S = ...; o = ...; }}`"
        )));
    }
    let content;
    braced!(content in input);
    let body: TokenStream = content.parse()?;
    Ok(Header {
        attrs,
        vis,
        ident,
        body,
    })
}

/// A statement of a variant body.
pub enum Stmt {
    /// `inputs { name: kind, ... }`
    Inputs {
        /// The `inputs` keyword.
        kw: Ident,
        /// The declarations in order.
        decls: Vec<InputDecl>,
    },
    /// `state S: [K, V];`
    State {
        /// The `state` keyword.
        kw: Ident,
        /// The state's name.
        name: Ident,
        /// The shape symbols inside the brackets.
        shape: Vec<Ident>,
        /// The bracket group.
        shape_range: Range,
    },
    /// `l2norm(q, k);`
    L2norm {
        /// The `l2norm` keyword.
        kw: Ident,
        /// The arguments.
        args: Vec<Ident>,
        /// The whole statement without `;`.
        range: Range,
    },
    /// `lhs = rhs;`: the state update, the output read or the `scale` setting.
    Assign {
        /// Left-hand side.
        lhs: Ident,
        /// Right-hand side.
        rhs: Expr,
    },
}

/// `name: kind` in the inputs block.
pub struct InputDecl {
    /// The input's name as written (may be a raw identifier).
    pub name: Ident,
    /// The kind's tokens, interpreted later (so an unknown kind does not hide the name).
    pub kind: Vec<TokenTree>,
    /// Range of the kind tokens (the name's when there are none).
    pub kind_range: Range,
}

impl InputDecl {
    /// The name without a raw-identifier prefix (`r#type` → `type`).
    pub fn name_str(&self) -> String {
        self.name.unraw().to_string()
    }
}

/// An expression of the update or the read.
#[derive(Clone, Debug)]
pub enum Expr {
    /// A name: an input, the state, or a word of the grammar (`I`, `gamma`, `scale`).
    Name(Ident),
    /// A number literal; `value` is `None` when it does not parse as a number.
    Num {
        /// The parsed value.
        value: Option<f64>,
        /// Its span.
        span: Span,
    },
    /// `f(args)`: `exp`, `Diag`, `sum`, or an unknown function.
    Call {
        /// The function name.
        func: Ident,
        /// The arguments, comma separated.
        args: Vec<Expr>,
        /// Span of the closing parenthesis.
        close: Span,
    },
    /// `( inner )`.
    Paren {
        /// The inner expression.
        inner: Box<Expr>,
        /// The whole group.
        range: Range,
    },
    /// `inner^T`.
    Transpose {
        /// The transposed expression.
        inner: Box<Expr>,
        /// The `T` token.
        t: Span,
    },
    /// `-inner`.
    Neg {
        /// The minus sign.
        minus: Span,
        /// The negated expression.
        inner: Box<Expr>,
    },
    /// `a * b * ...`, flattened, at least two factors.
    Product(Vec<Expr>),
    /// `a + b - c ...`, flattened, at least two terms; the first term has no operator.
    Sum(Vec<(Option<Sign>, Expr)>),
}

/// The operator before a term of a sum.
#[derive(Clone, Copy, Debug)]
pub struct Sign {
    /// True for `-`.
    pub minus: bool,
    /// The operator's span.
    pub span: Span,
}

impl Expr {
    /// The range of tokens this expression came from.
    pub fn range(&self) -> Range {
        match self {
            Expr::Name(i) => Range::one(i.span()),
            Expr::Num { span, .. } => Range::one(*span),
            Expr::Call { func, close, .. } => Range {
                start: func.span(),
                end: *close,
            },
            Expr::Paren { range, .. } => *range,
            Expr::Transpose { inner, t } => Range {
                start: inner.range().start,
                end: *t,
            },
            Expr::Neg { minus, inner } => Range {
                start: *minus,
                end: inner.range().end,
            },
            Expr::Product(factors) => match (factors.first(), factors.last()) {
                (Some(a), Some(b)) => Range::to(a.range(), b.range()),
                // Products are built with at least two factors; a fallback keeps this total.
                _ => Range::one(Span::call_site()),
            },
            Expr::Sum(terms) => match (terms.first(), terms.last()) {
                (Some((_, a)), Some((_, b))) => Range::to(a.range(), b.range()),
                _ => Range::one(Span::call_site()),
            },
        }
    }

    /// The factors of a product, or the expression itself as the only factor.
    pub fn factors(&self) -> Vec<&Expr> {
        match self {
            Expr::Product(f) => f.iter().collect(),
            other => vec![other],
        }
    }

    /// The terms of a sum, or the expression itself as the only term.
    pub fn terms(&self) -> Vec<(Option<Sign>, &Expr)> {
        match self {
            Expr::Sum(t) => t.iter().map(|(s, e)| (*s, e)).collect(),
            other => vec![(None, other)],
        }
    }

    /// The expression inside any number of parentheses.
    pub fn unparen(&self) -> &Expr {
        match self {
            Expr::Paren { inner, .. } => inner.unparen(),
            other => other,
        }
    }

    /// The name, if this is a bare name.
    pub fn name(&self) -> Option<&Ident> {
        match self {
            Expr::Name(i) => Some(i),
            _ => None,
        }
    }

    /// Whether `pred` holds for a name anywhere inside this expression.
    pub fn any_name(&self, pred: &dyn Fn(&Ident) -> bool) -> Option<&Ident> {
        match self {
            Expr::Name(i) => pred(i).then_some(i),
            Expr::Num { .. } => None,
            Expr::Call { args, .. } => args.iter().find_map(|a| a.any_name(pred)),
            Expr::Paren { inner, .. } | Expr::Transpose { inner, .. } | Expr::Neg { inner, .. } => {
                inner.any_name(pred)
            }
            Expr::Product(f) => f.iter().find_map(|a| a.any_name(pred)),
            Expr::Sum(t) => t.iter().find_map(|(_, a)| a.any_name(pred)),
        }
    }
}

/// Parses a variant body, statement by statement. On a syntax error, returns the statements
/// parsed before it together with the error.
pub fn parse_body(tokens: TokenStream) -> (Vec<Stmt>, Option<syn::Error>) {
    let mut stmts = Vec::new();
    let result = Parser::parse2(
        |input: ParseStream| {
            while !input.is_empty() {
                stmts.push(parse_stmt(input)?);
            }
            Ok(())
        },
        tokens,
    );
    (stmts, result.err())
}

const STATEMENTS: &str = "`inputs { ... }`, `state S: [K, V];`, `S = ...;` (the update), `o = ...;` (the read), `scale = ...;` or `l2norm(q, k);`";

/// Words that start a statement naming something every variant supports at call time.
const CALL_TIME: [&str; 9] = [
    "options",
    "h0",
    "initial_state",
    "final_state",
    "output_final_state",
    "cu_seqlens",
    "varlen",
    "gva",
    "value_heads",
];

fn parse_stmt(input: ParseStream) -> syn::Result<Stmt> {
    if !input.peek(Ident::peek_any) {
        return Err(input.error(format!("expected a statement: {STATEMENTS}")));
    }
    let fork = input.fork();
    let word = Ident::parse_any(&fork)?;
    let word_str = word.to_string();
    if word_str == "inputs" && fork.peek(syn::token::Brace) {
        return parse_inputs(input);
    }
    if word_str == "state" && fork.peek(Ident) {
        return parse_state(input);
    }
    if word_str == "l2norm" && fork.peek(syn::token::Paren) {
        return parse_l2norm(input);
    }
    if CALL_TIME.contains(&word_str.as_str()) && !fork.peek(Token![=]) {
        return Err(syn::Error::new(
            word.span(),
            format!(
                "`{word_str}`: the initial state h0, the final state, varlen `cu_seqlens` and GVA (more value heads than query/key heads) are call-time options that every variant supports; there is nothing to declare"
            ),
        ));
    }
    if fork.peek(Token![=]) && !fork.peek(Token![==]) {
        let lhs = Ident::parse_any(input)?;
        let _eq: Token![=] = input.parse()?;
        let rhs = parse_expr(input)?;
        expect_semi(input, &rhs.range())?;
        return Ok(Stmt::Assign { lhs, rhs });
    }
    Err(syn::Error::new(
        word.span(),
        format!("expected a statement, found `{word_str}`; allowed: {STATEMENTS}"),
    ))
}

fn expect_semi(input: ParseStream, after: &Range) -> syn::Result<()> {
    if input.peek(Token![;]) {
        let _: Token![;] = input.parse()?;
        Ok(())
    } else if input.is_empty() {
        Err(Range::one(after.end).error("expected `;` after this statement"))
    } else {
        Err(input.error(
            "expected `;` or an operator (`+`, `-`, `*`, `^T`) here; inside expressions only names, numbers, function calls `exp(..)`, `Diag(..)`, `sum(..)` and parentheses are allowed",
        ))
    }
}

fn parse_inputs(input: ParseStream) -> syn::Result<Stmt> {
    let kw = Ident::parse_any(input)?;
    let content;
    braced!(content in input);
    let mut decls = Vec::new();
    while !content.is_empty() {
        if !content.peek(Ident::peek_any) {
            return Err(content.error("expected an input declaration `name: kind`, e.g. `q: [K]`"));
        }
        let name: Ident = content.parse()?;
        if !content.peek(Token![:]) {
            return Err(content.error(format!(
                "expected `:` and a kind after the input `{name}`, e.g. `{name}: [K]`"
            )));
        }
        let colon: Token![:] = content.parse()?;
        let mut kind = Vec::new();
        while !content.is_empty() && !content.peek(Token![,]) {
            kind.push(content.parse::<TokenTree>()?);
        }
        let kind_range = match (kind.first(), kind.last()) {
            (Some(a), Some(b)) => Range {
                start: a.span(),
                end: b.span(),
            },
            _ => Range::one(colon.span),
        };
        decls.push(InputDecl {
            name,
            kind,
            kind_range,
        });
        if !content.is_empty() {
            let _: Token![,] = content.parse()?;
        }
    }
    // A `;` after the block is tolerated: people write one out of habit.
    if input.peek(Token![;]) {
        let _: Token![;] = input.parse()?;
    }
    Ok(Stmt::Inputs { kw, decls })
}

fn parse_state(input: ParseStream) -> syn::Result<Stmt> {
    let kw = Ident::parse_any(input)?;
    let name: Ident = input.parse()?;
    if !input.peek(Token![:]) {
        return Err(input.error(format!(
            "expected `:` and the state's shape: `state {name}: [K, V];`"
        )));
    }
    let _: Token![:] = input.parse()?;
    if !input.peek(syn::token::Bracket) {
        return Err(input.error(format!(
            "expected the state's shape in brackets: `state {name}: [K, V];`"
        )));
    }
    let content;
    let bracket = bracketed!(content in input);
    let mut shape = Vec::new();
    while !content.is_empty() {
        if !content.peek(Ident::peek_any) {
            return Err(content.error("the state's shape is `[K, V]`"));
        }
        shape.push(Ident::parse_any(&content)?);
        if !content.is_empty() {
            let _: Token![,] = content.parse()?;
        }
    }
    let shape_range = Range {
        start: bracket.span.open(),
        end: bracket.span.close(),
    };
    expect_semi(input, &shape_range)?;
    Ok(Stmt::State {
        kw,
        name,
        shape,
        shape_range,
    })
}

fn parse_l2norm(input: ParseStream) -> syn::Result<Stmt> {
    let kw = Ident::parse_any(input)?;
    let content;
    let paren = parenthesized!(content in input);
    let mut args = Vec::new();
    while !content.is_empty() {
        if !content.peek(Ident::peek_any) {
            return Err(content.error("l2norm takes input names: `l2norm(q, k);`"));
        }
        args.push(Ident::parse_any(&content)?);
        if !content.is_empty() {
            let _: Token![,] = content.parse()?;
        }
    }
    let range = Range {
        start: kw.span(),
        end: paren.span.close(),
    };
    expect_semi(input, &range)?;
    Ok(Stmt::L2norm { kw, args, range })
}

/// `expr := product (('+' | '-') product)*`
fn parse_expr(input: ParseStream) -> syn::Result<Expr> {
    let first = parse_product(input)?;
    let mut terms = vec![(None, first)];
    loop {
        let sign = if input.peek(Token![+]) && !input.peek(Token![+=]) {
            let t: Token![+] = input.parse()?;
            Sign {
                minus: false,
                span: t.span,
            }
        } else if input.peek(Token![-]) && !input.peek(Token![-=]) && !input.peek(Token![->]) {
            let t: Token![-] = input.parse()?;
            Sign {
                minus: true,
                span: t.span,
            }
        } else {
            break;
        };
        terms.push((Some(sign), parse_product(input)?));
    }
    Ok(if terms.len() == 1 {
        // Just checked: exactly one term.
        terms.swap_remove(0).1
    } else {
        Expr::Sum(terms)
    })
}

/// `product := unary ('*' unary)*`
fn parse_product(input: ParseStream) -> syn::Result<Expr> {
    let mut factors = vec![parse_unary(input)?];
    while input.peek(Token![*]) && !input.peek(Token![*=]) {
        let _: Token![*] = input.parse()?;
        factors.push(parse_unary(input)?);
    }
    Ok(if factors.len() == 1 {
        factors.swap_remove(0)
    } else {
        Expr::Product(factors)
    })
}

/// `unary := '-' unary | postfix`
fn parse_unary(input: ParseStream) -> syn::Result<Expr> {
    if input.peek(Token![-]) {
        let minus: Token![-] = input.parse()?;
        let inner = parse_unary(input)?;
        return Ok(Expr::Neg {
            minus: minus.span,
            inner: Box::new(inner),
        });
    }
    parse_postfix(input)
}

/// `postfix := atom ('^' 'T')*`
fn parse_postfix(input: ParseStream) -> syn::Result<Expr> {
    let mut expr = parse_atom(input)?;
    while input.peek(Token![^]) && !input.peek(Token![^=]) {
        let caret: Token![^] = input.parse()?;
        let t = if input.peek(Ident::peek_any) {
            Some(Ident::parse_any(input)?)
        } else {
            None
        };
        match t {
            Some(t) if t == "T" => {
                expr = Expr::Transpose {
                    inner: Box::new(expr),
                    t: t.span(),
                }
            }
            Some(t) => {
                return Err(syn::Error::new(
                    t.span(),
                    format!("after `^` only `T` (transpose) is allowed, found `{t}`"),
                ));
            }
            None => {
                return Err(syn::Error::new(
                    caret.span,
                    "after `^` only `T` (transpose) is allowed",
                ));
            }
        }
    }
    if input.peek(Token![.]) {
        return Err(input.error(
            "method calls are not part of the grammar; write functions instead, e.g. `sum(q * u * k)`",
        ));
    }
    Ok(expr)
}

/// `atom := name | name '(' args ')' | '(' expr ')' | number`
fn parse_atom(input: ParseStream) -> syn::Result<Expr> {
    if input.peek(syn::token::Paren) {
        let content;
        let paren = parenthesized!(content in input);
        let inner = parse_expr(&content)?;
        if !content.is_empty() {
            return Err(content.error("expected `)`: the expression ends here"));
        }
        return Ok(Expr::Paren {
            inner: Box::new(inner),
            range: Range {
                start: paren.span.open(),
                end: paren.span.close(),
            },
        });
    }
    if input.peek(Ident::peek_any) {
        let name = Ident::parse_any(input)?;
        if input.peek(syn::token::Paren) {
            let content;
            let paren = parenthesized!(content in input);
            let mut args = Vec::new();
            while !content.is_empty() {
                args.push(parse_expr(&content)?);
                if !content.is_empty() {
                    if !content.peek(Token![,]) {
                        return Err(content.error("expected `,` or `)` in the argument list"));
                    }
                    let _: Token![,] = content.parse()?;
                }
            }
            return Ok(Expr::Call {
                func: name,
                args,
                close: paren.span.close(),
            });
        }
        return Ok(Expr::Name(name));
    }
    if input.peek(syn::LitFloat) {
        let lit: syn::LitFloat = input.parse()?;
        return Ok(Expr::Num {
            value: lit.base10_parse::<f64>().ok(),
            span: lit.span(),
        });
    }
    if input.peek(syn::LitInt) {
        let lit: syn::LitInt = input.parse()?;
        return Ok(Expr::Num {
            value: lit.base10_parse::<f64>().ok(),
            span: lit.span(),
        });
    }
    Err(input.error(
        "expected a name, a number, a function call such as `exp(g)`, or `(`; the forms are listed in the `recurrence!` docs",
    ))
}
