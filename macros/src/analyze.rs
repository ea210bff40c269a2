//! From the syntax of one variant to a validated [`Spec`], every error pointing at the token
//! responsible.
//!
//! The meaning of an input (its [`Role`]) is not declared: it follows from where the input is
//! used (`k` in `k * v^T` is the key, `q` in `S^T * q` the query). The declared kind (`[K]`,
//! `log_gate`, ...) is checked against that use, which is what catches K/V mix-ups and gates
//! that are not log-space. Once the forms are known, [`Spec::validate`] — the single source of
//! truth for what linrec supports — has the last word; its errors are mapped back to a span.

use linrec_spec::{
    ConstantRate, Decay, DeltaOrder, Features, Input, Read, Role, Scale, Spec, SpecError,
    Transition, Write,
};
use proc_macro2::{Delimiter, TokenTree};
use syn::Ident;
use syn::ext::IdentExt;

use crate::syntax::{Expr, Header, InputDecl, Range, Stmt};

/// The declared kind of an input: its shape and whether it is log-space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `[K]`: a per-token vector over the key dim (query or key).
    VecK,
    /// `[V]`: a per-token vector over the value dim (value).
    VecV,
    /// `scalar`: a per-token scalar (β).
    Scalar,
    /// `log_gate`: a per-token log-space scalar gate.
    LogGate,
    /// `log_gate[K]`: a per-token log-space gate over K.
    LogGateK,
    /// `log_rate`: a per-head constant log-space decay rate.
    LogRate,
    /// `per_head[K]`: a per-head constant vector over K (the bonus u).
    HeadK,
}

/// Every kind, for messages.
pub const KINDS: &str = "`[K]` (query, key), `[V]` (value), `scalar` (beta), `log_gate` (scalar decay exp(g)), `log_gate[K]` (diagonal decay Diag(exp(g))), `log_rate` (constant per-head decay exp(a)) or `per_head[K]` (the bonus u)";

/// The decays.
const DECAYS: &str = "`exp(g)` (g: log_gate), `Diag(exp(g))` (g: log_gate[K]), `gamma` (RetNet's per-head constant) or `exp(a)` (a: log_rate)";

/// What may stand before the state in the update.
const CARRY_FACTORS: &str = "`exp(g)` (g: log_gate), `Diag(exp(g))` (g: log_gate[K]), `gamma` (RetNet's per-head constant), `exp(a)` (a: log_rate) and the delta rule `(I - beta * k * k^T)`";

const READS: &str = "`o = S^T * q * scale` (inclusive) or `o = (S_prev^T * q + sum(q * u * k) * v) * scale` (exclusive + bonus)";

/// Words of the grammar that cannot name an input.
const GRAMMAR_WORDS: [&str; 5] = ["I", "exp", "Diag", "sum", "l2norm"];

impl Kind {
    fn text(self) -> &'static str {
        match self {
            Kind::VecK => "[K]",
            Kind::VecV => "[V]",
            Kind::Scalar => "scalar",
            Kind::LogGate => "log_gate",
            Kind::LogGateK => "log_gate[K]",
            Kind::LogRate => "log_rate",
            Kind::HeadK => "per_head[K]",
        }
    }

    fn parse(decl: &InputDecl) -> syn::Result<Kind> {
        let words: Vec<String> = decl
            .kind
            .iter()
            .map(|t| match t {
                TokenTree::Group(g) if g.delimiter() == Delimiter::Bracket => {
                    format!("[{}]", g.stream().to_string().replace(' ', ""))
                }
                other => other.to_string(),
            })
            .collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["[K]"] => Ok(Kind::VecK),
            ["[V]"] => Ok(Kind::VecV),
            ["scalar"] => Ok(Kind::Scalar),
            ["log_gate"] => Ok(Kind::LogGate),
            ["log_gate", "[K]"] => Ok(Kind::LogGateK),
            ["log_rate"] => Ok(Kind::LogRate),
            ["per_head", "[K]"] => Ok(Kind::HeadK),
            [] => Err(decl.kind_range.error(format!(
                "input `{}` has no kind; allowed: {KINDS}",
                decl.name_str()
            ))),
            _ => Err(decl.kind_range.error(format!(
                "unknown kind `{}` for input `{}`; allowed: {KINDS}",
                words.join(""),
                decl.name_str()
            ))),
        }
    }
}

fn role_text(role: Role) -> &'static str {
    match role {
        Role::Query => "query",
        Role::Key => "key",
        Role::Value => "value",
        Role::Gate => "gate",
        Role::Beta => "beta",
        Role::Bonus => "bonus",
        Role::DecayRate => "decay rate",
    }
}

/// A variant that passed every check.
pub struct Variant {
    /// The doc comment lines, verbatim.
    pub doc_lines: Vec<String>,
    /// Visibility of the generated items.
    pub vis: syn::Visibility,
    /// The type name.
    pub ident: Ident,
    /// The input identifiers as written, in declaration order, with their roles.
    pub inputs: Vec<(Ident, Role)>,
    /// The validated spec.
    pub spec: Spec,
}

/// What could be read of a variant that failed, so its items can still be emitted (with the
/// error) and the rest of the user's crate keeps type-checking.
pub struct Skeleton {
    /// Visibility of the generated items.
    pub vis: syn::Visibility,
    /// The type name.
    pub ident: Ident,
    /// The input identifiers that were read.
    pub inputs: Vec<Ident>,
}

/// Analyses one variant: its body's statements, then the spec they build.
pub fn analyze(header: Header) -> Result<Variant, (Skeleton, syn::Error)> {
    let (stmts, syntax_error) = crate::syntax::parse_body(header.body.clone());
    let skeleton = |stmts: &[Stmt]| Skeleton {
        vis: header.vis.clone(),
        ident: header.ident.clone(),
        inputs: stmts
            .iter()
            .find_map(|s| match s {
                Stmt::Inputs { decls, .. } => Some(decls.iter().map(|d| d.name.clone()).collect()),
                _ => None,
            })
            .unwrap_or_default(),
    };
    if let Some(e) = syntax_error {
        return Err((skeleton(&stmts), e));
    }
    match check(&header, &stmts) {
        Ok(v) => Ok(v),
        Err(e) => Err((skeleton(&stmts), e)),
    }
}

struct Decl {
    ident: Ident,
    name: String,
    kind: Kind,
    /// Its role and the first use that gave it.
    role: Option<(Role, Range)>,
}

struct Ctx {
    decls: Vec<Decl>,
    state: String,
    state_prev: String,
}

/// Spans of the parts of the spec, to map a [`SpecError`] back to the source.
struct Spans {
    name: Range,
    decay: Option<Range>,
    delta: Option<Range>,
    write: Range,
    read: Range,
    scale: Option<Range>,
}

fn check(header: &Header, stmts: &[Stmt]) -> syn::Result<Variant> {
    let doc_lines = doc_lines(&header.attrs)?;
    let ident_range = Range::one(header.ident.span());
    let variant = header.ident.unraw().to_string();

    // Collect the statements, one of each kind (two `o = ...` lines are caught once the state
    // name is known).
    let mut inputs: Option<(&Ident, &[InputDecl])> = None;
    let mut state: Option<(&Ident, &[Ident], Range)> = None;
    let mut l2norm: Option<(&[Ident], Range)> = None;
    let mut assigns: Vec<(&Ident, &Expr)> = Vec::new();
    for stmt in stmts {
        match stmt {
            Stmt::Inputs { kw, decls } => {
                if inputs.is_some() {
                    return Err(Range::one(kw.span()).error(
                        "a second `inputs` block; declare all inputs in one `inputs { ... }`",
                    ));
                }
                inputs = Some((kw, decls));
            }
            Stmt::State {
                kw,
                name,
                shape,
                shape_range,
            } => {
                if state.is_some() {
                    return Err(Range::one(kw.span()).error(
                        "a second `state` declaration; a recurrence has one state `S: [K, V]`",
                    ));
                }
                state = Some((name, shape, *shape_range));
            }
            Stmt::L2norm { kw, args, range } => {
                if l2norm.is_some() {
                    return Err(Range::one(kw.span()).error("a second `l2norm(...)` line"));
                }
                l2norm = Some((args, *range));
            }
            Stmt::Assign { lhs, rhs } => assigns.push((lhs, rhs)),
        }
    }

    let Some((_, decls)) = inputs else {
        return Err(ident_range.error(format!(
            "variant `{variant}` has no inputs; declare them first: `inputs {{ q: [K], k: [K], v: [V] }}`"
        )));
    };
    let Some((state_ident, shape, shape_range)) = state else {
        return Err(ident_range.error(format!(
            "variant `{variant}` has no state; declare it: `state S: [K, V];`"
        )));
    };
    let shape: Vec<String> = shape.iter().map(|s| s.to_string()).collect();
    if shape != ["K", "V"] {
        let hint = if shape == ["V", "K"] {
            " (keys by values, as in fla: the read is `S^T * q`)"
        } else {
            ""
        };
        return Err(shape_range.error(format!(
            "the state's shape is `[K, V]`{hint}; found `[{}]`",
            shape.join(", ")
        )));
    }
    let state_name = state_ident.unraw().to_string();
    let mut ctx = Ctx {
        decls: Vec::new(),
        state_prev: format!("{state_name}_prev"),
        state: state_name,
    };
    for d in decls {
        let name = d.name_str();
        if ctx.decls.iter().any(|e| e.name == name) {
            return Err(Range::one(d.name.span()).error(format!(
                "input `{name}` is declared twice; give each input its own name"
            )));
        }
        if GRAMMAR_WORDS.contains(&name.as_str()) {
            return Err(Range::one(d.name.span()).error(format!(
                "`{name}` is a word of the grammar ({}); name the input differently",
                GRAMMAR_WORDS.join(", ")
            )));
        }
        if name == ctx.state || name == ctx.state_prev {
            return Err(Range::one(d.name.span()).error(format!(
                "`{name}` names the state; name the input differently"
            )));
        }
        let kind = Kind::parse(d)?;
        ctx.decls.push(Decl {
            ident: d.name.clone(),
            name,
            kind,
            role: None,
        });
    }

    // Sort the `x = ...` lines: the update, the scale setting, the read.
    let mut update: Option<(&Ident, &Expr)> = None;
    let mut output: Option<(&Ident, &Expr)> = None;
    let mut scale_line: Option<(&Ident, &Expr)> = None;
    for (lhs, rhs) in assigns {
        let name = lhs.unraw().to_string();
        let slot = if name == ctx.state {
            &mut update
        } else if name == "scale" {
            &mut scale_line
        } else if name == ctx.state_prev {
            return Err(Range::one(lhs.span()).error(format!(
                "`{name}` is the state before the token; the update assigns `{} = ...`",
                ctx.state
            )));
        } else {
            if ctx.decls.iter().any(|d| d.name == name) {
                return Err(Range::one(lhs.span()).error(format!(
                    "`{name}` names an input; the update assigns the state `{} = ...` and the read an output such as `o = ...`",
                    ctx.state
                )));
            }
            // An output never is a bare number: this is a misspelt setting.
            if matches!(rhs, Expr::Num { .. } | Expr::Neg { .. }) {
                return Err(Range::one(lhs.span()).error(format!(
                    "unknown setting `{name}`; the only setting is `scale = <number>;`"
                )));
            }
            &mut output
        };
        if let Some((first, _)) = slot {
            let what = if name == ctx.state {
                "the state update"
            } else if name == "scale" {
                "the scale"
            } else {
                "the output"
            };
            return Err(Range::one(lhs.span()).error(format!(
                "{what} is given twice (first as `{first} = ...`); a variant has one update `{} = ...`, one read `o = ...` and at most one `scale = ...`",
                ctx.state
            )));
        }
        *slot = Some((lhs, rhs));
    }
    let Some((_, update_rhs)) = update else {
        return Err(ident_range.error(format!(
            "variant `{variant}` has no state update; add one such as `{s} = exp(g) * {s} + k * v^T;`",
            s = ctx.state
        )));
    };
    let Some((_, read_rhs)) = output else {
        return Err(ident_range.error(format!(
            "variant `{variant}` has no output; add the read: `o = {}^T * q * scale;`",
            ctx.state
        )));
    };

    let upd = ctx.update(update_rhs)?;
    let read = ctx.read(read_rhs)?;

    let (scale, scale_range) = match scale_line {
        None => (Scale::InvSqrtK, None),
        Some((_, rhs)) => {
            let value = match rhs {
                Expr::Num { value: Some(v), .. } => Some(*v),
                Expr::Neg { inner, .. } => match &**inner {
                    Expr::Num { value: Some(v), .. } => Some(-v),
                    _ => None,
                },
                _ => None,
            };
            let Some(v) = value else {
                return Err(rhs.range().error(
                    "`scale` is set to a number, e.g. `scale = 1.0;`; without the line it is K^-1/2",
                ));
            };
            (Scale::Value(v), Some(rhs.range()))
        }
    };

    let mut features = Features::default();
    if let Some((args, range)) = l2norm {
        ctx.l2norm(args, range)?;
        features.qk_l2norm = true;
    }

    if let Some(unused) = ctx.decls.iter().find(|d| d.role.is_none()) {
        return Err(Range::one(unused.ident.span()).error(format!(
            "input `{}` is declared but not used by the update or the read; use it or remove it",
            unused.name
        )));
    }

    let spec = Spec {
        name: snake_case(&variant),
        doc: spec_doc(&doc_lines),
        inputs: ctx
            .decls
            .iter()
            .filter_map(|d| d.role.map(|(r, _)| Input::new(d.name.clone(), r)))
            .collect(),
        decay: upd.decay,
        transition: upd.transition,
        write: upd.write,
        read: read.read,
        scale,
        features,
    };
    let spans = Spans {
        name: ident_range,
        decay: upd.decay_range,
        delta: upd.delta_range,
        write: upd.write_range,
        read: read.range,
        scale: scale_range,
    };
    if let Err(e) = spec.validate() {
        return Err(spec_error_range(&e, &spec, &ctx, &spans).error(e));
    }
    Ok(Variant {
        doc_lines,
        vis: header.vis.clone(),
        ident: header.ident.clone(),
        inputs: ctx
            .decls
            .iter()
            .filter_map(|d| d.role.map(|(r, _)| (d.ident.clone(), r)))
            .collect(),
        spec,
    })
}

/// Where a [`SpecError`] from [`Spec::validate`] points. The checks above catch most of these
/// first with more specific messages; this keeps every validation rule anchored to a token.
fn spec_error_range(e: &SpecError, spec: &Spec, ctx: &Ctx, spans: &Spans) -> Range {
    let decl = |name: &str| {
        ctx.decls
            .iter()
            .find(|d| d.name == name)
            .map(|d| Range::one(d.ident.span()))
    };
    let use_of = |name: &str| {
        ctx.decls
            .iter()
            .find(|d| d.name == name)
            .and_then(|d| d.role.map(|(_, r)| r))
    };
    let found = match e {
        SpecError::InvalidName { .. } => Some(spans.name),
        SpecError::InvalidInputName { name, .. }
        | SpecError::DuplicateName { name, .. }
        | SpecError::UnusedInput { name, .. } => decl(name),
        SpecError::DuplicateRole { second, .. } => use_of(second).or_else(|| decl(second)),
        SpecError::MissingInput { role, .. } => match role {
            Role::Beta => spans.delta.or(Some(spans.write)),
            Role::Bonus => Some(spans.read),
            Role::Gate | Role::DecayRate => spans.decay,
            Role::Query => Some(spans.read),
            Role::Key | Role::Value => Some(spans.write),
        },
        SpecError::Unsupported { .. } => {
            if matches!(spec.transition, Transition::Delta { .. }) && spec.write != Write::BetaOuter
            {
                Some(spans.write)
            } else {
                Some(spans.read)
            }
        }
        SpecError::BadScale { .. } => spans.scale,
    };
    found.unwrap_or(spans.name)
}

/// The doc comment's lines, verbatim (without the one leading space `///` leaves).
fn doc_lines(attrs: &[syn::Attribute]) -> syn::Result<Vec<String>> {
    let mut lines = Vec::new();
    for attr in attrs {
        let ok = match &attr.meta {
            syn::Meta::NameValue(nv) if nv.path.is_ident("doc") => match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => {
                    let v = s.value();
                    lines.push(v.strip_prefix(' ').map(str::to_string).unwrap_or(v));
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !ok {
            return Err(syn::Error::new_spanned(
                attr,
                "only doc comments (`/// ...`) are allowed on a variant",
            ));
        }
    }
    Ok(lines)
}

/// The spec's one-line doc: the doc comment's first paragraph, lines joined by spaces.
fn spec_doc(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| l.trim())
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `GatedDeltaNet` → `gated_delta_net`, `HGRN2` → `hgrn2`, `HTTPServer` → `http_server`.
pub fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            // A word starts at an uppercase letter after a lowercase letter or digit, or at the
            // last capital of an acronym followed by lowercase (`HTTPServer`).
            let boundary =
                prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower);
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// The update's forms.
struct Update {
    decay: Decay,
    transition: Transition,
    write: Write,
    decay_range: Option<Range>,
    delta_range: Option<Range>,
    write_range: Range,
}

/// A factor before the state.
enum Carry {
    Decay(Decay, Range),
    Delta(Range),
}

/// The read's form.
struct ReadForm {
    read: Read,
    range: Range,
}

/// A term of the read.
enum ReadTerm<'a> {
    State {
        prev: bool,
        query: &'a Ident,
        range: Range,
    },
    Bonus {
        sum_args: &'a [Expr],
        sum_range: Range,
        value: &'a Ident,
        range: Range,
    },
}

/// The factors of a product, looking through parentheses around products.
fn flat_factors(e: &Expr) -> Vec<&Expr> {
    let mut out = Vec::new();
    for f in e.factors() {
        match f {
            Expr::Paren { inner, .. } if matches!(**inner, Expr::Product(_)) => {
                out.extend(flat_factors(inner))
            }
            Expr::Paren { inner, .. } if matches!(**inner, Expr::Name(_) | Expr::Call { .. }) => {
                out.push(&**inner)
            }
            other => out.push(other),
        }
    }
    out
}

/// The expression as written, normalised, for messages.
fn text(e: &Expr) -> String {
    match e {
        Expr::Name(i) => i.to_string(),
        Expr::Num { value, .. } => value.map_or_else(|| "?".into(), |v| format!("{v}")),
        Expr::Call { func, args, .. } => format!(
            "{func}({})",
            args.iter().map(text).collect::<Vec<_>>().join(", ")
        ),
        Expr::Paren { inner, .. } => format!("({})", text(inner)),
        Expr::Transpose { inner, .. } => format!("{}^T", text(inner)),
        Expr::Neg { inner, .. } => format!("-{}", text(inner)),
        Expr::Product(f) => f.iter().map(text).collect::<Vec<_>>().join(" * "),
        Expr::Sum(t) => {
            let mut s = String::new();
            for (sign, e) in t {
                match sign {
                    Some(sg) if sg.minus => s.push_str(" - "),
                    Some(_) => s.push_str(" + "),
                    None => {}
                }
                s.push_str(&text(e));
            }
            s
        }
    }
}

impl Ctx {
    fn decl(&self, ident: &Ident) -> Option<usize> {
        let name = ident.unraw().to_string();
        self.decls.iter().position(|d| d.name == name)
    }

    fn declared_list(&self) -> String {
        self.decls
            .iter()
            .map(|d| format!("`{}`", d.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn unknown(&self, ident: &Ident) -> syn::Error {
        Range::one(ident.span()).error(format!(
            "unknown input `{}`; the declared inputs are {} (declare it in `inputs {{ ... }}`)",
            ident.unraw(),
            self.declared_list()
        ))
    }

    /// The declaration an identifier refers to, or an "unknown input" error.
    fn lookup(&self, ident: &Ident) -> syn::Result<(usize, Kind)> {
        match self.decl(ident) {
            Some(i) => Ok((i, self.decls[i].kind)),
            None => Err(self.unknown(ident)),
        }
    }

    fn is_state(&self, ident: &Ident) -> bool {
        *ident == self.state.as_str() || *ident == self.state_prev.as_str()
    }

    fn mentions_state<'e>(&self, e: &'e Expr) -> Option<&'e Ident> {
        e.any_name(&|i: &Ident| self.is_state(i))
    }

    /// Gives input `i` its role, used at `at`; an input plays one role and a role has one input.
    fn assign(&mut self, i: usize, role: Role, at: Range) -> syn::Result<()> {
        let name = self.decls[i].name.clone();
        if let Some((had, _)) = self.decls[i].role {
            if had == role {
                return Ok(());
            }
            return Err(at.error(format!(
                "`{name}` is already the {} of this recurrence, so it cannot also be its {}; an input plays one role (declare another input)",
                role_text(had),
                role_text(role)
            )));
        }
        if let Some(other) = self
            .decls
            .iter()
            .find(|d| d.role.is_some_and(|(r, _)| r == role))
        {
            return Err(at.error(format!(
                "`{name}` is used as the {role}, but `{}` already is the {role}; a recurrence has one {role} input, so use `{}` here",
                other.name,
                other.name,
                role = role_text(role),
            )));
        }
        self.decls[i].role = Some((role, at));
        Ok(())
    }

    // ---------------------------------------------------------------- the update

    fn update(&mut self, rhs: &Expr) -> syn::Result<Update> {
        let s = self.state.clone();
        let mut carry: Option<&Expr> = None;
        let mut write: Option<&Expr> = None;
        for (sign, term) in rhs.terms() {
            if let Some(sign) = sign.filter(|s| s.minus) {
                return Err(Range::one(sign.span).error(format!(
                    "the update adds its terms: `{s} = <decay/transition> * {s} + <write>`; a subtracted term is not a supported form"
                )));
            }
            if self.mentions_state(term).is_some() {
                if carry.is_some() {
                    return Err(term.range().error(format!(
                        "the state appears in two terms of the update; it appears once, as the last factor of one product, e.g. `{s} = exp(g) * {s} + k * v^T`"
                    )));
                }
                carry = Some(term);
            } else {
                if write.is_some() {
                    return Err(term.range().error(
                        "a second write term; the update has one write: `k * v^T` or `beta * k * v^T`",
                    ));
                }
                write = Some(term);
            }
        }
        let Some(carry) = carry else {
            return Err(rhs.range().error(format!(
                "the update does not carry the state: write `{s} = <decay> * {s} + k * v^T`, e.g. `{s} = exp(g) * {s} + k * v^T` (or `{s} = {s} + k * v^T` without decay)"
            )));
        };
        let Some(write) = write else {
            return Err(rhs.range().error(
                "the update has no write term: add `+ k * v^T` (or `+ beta * k * v^T` in the delta family)",
            ));
        };

        let factors = flat_factors(carry);
        let (last, before) = match factors.split_last() {
            Some(x) => x,
            None => return Err(carry.range().error("empty term")),
        };
        for f in before {
            if self.mentions_state(f).is_some() {
                let range = if self.is_bare_state(f) && self.is_bare_state(last) {
                    carry.range()
                } else {
                    f.range()
                };
                return Err(self.state_misuse(f, last, range));
            }
        }
        if !self.is_bare_state(last) {
            return Err(self.state_misuse(last, last, last.range()));
        }

        let mut decay: Option<(Decay, Range, usize)> = None;
        let mut delta: Option<(Range, usize)> = None;
        for (pos, f) in before.iter().enumerate() {
            match self.carry_factor(f)? {
                Carry::Decay(d, r) => {
                    if decay.is_some() {
                        return Err(r.error(format!(
                            "a second decay factor; an update has at most one decay: {DECAYS}"
                        )));
                    }
                    decay = Some((d, r, pos));
                }
                Carry::Delta(r) => {
                    if delta.is_some() {
                        return Err(r.error("a second delta rule; an update has at most one"));
                    }
                    delta = Some((r, pos));
                }
            }
        }
        let transition = match (delta, decay) {
            (None, _) => Transition::Identity,
            // `exp(g) * (I - ...) * S` applies the delta rule first, then the decay.
            (Some((_, dp)), Some((_, _, cp))) if cp < dp => Transition::Delta {
                order: DeltaOrder::DeltaThenDecay,
            },
            // Without a decay the order is moot; use the canonical one.
            (Some(_), _) => Transition::Delta {
                order: DeltaOrder::DecayThenDelta,
            },
        };
        let (write_form, write_range) = self.write(write)?;
        Ok(Update {
            decay: decay.map_or(Decay::None, |(d, _, _)| d),
            transition,
            write: write_form,
            decay_range: decay.map(|(_, r, _)| r),
            delta_range: delta.map(|(r, _)| r),
            write_range,
        })
    }

    fn is_bare_state(&self, e: &Expr) -> bool {
        e.name().is_some_and(|i| self.is_state(i))
    }

    /// The error for a state used other than as the last factor of the carried product.
    fn state_misuse(&self, f: &Expr, last: &Expr, range: Range) -> syn::Error {
        let s = &self.state;
        if self.is_bare_state(f) && self.is_bare_state(last) {
            range.error(format!(
                "unsupported form `{}`: the update is linear in the state, which appears once, as the last factor (`exp(g) * {s}`)",
                text(&Expr::Product(vec![f.clone(), last.clone()]))
            ))
        } else if self.is_bare_state(f) {
            range.error(format!(
                "the state comes last in its product: decays and the delta rule act on it from the left, e.g. `exp(g) * {s}`"
            ))
        } else {
            range.error(format!(
                "unsupported form `{}`: the state enters the update linearly, as the last factor of a product such as `exp(g) * {s}` or `(I - beta * k * k^T) * {s}`",
                text(f)
            ))
        }
    }

    fn carry_factor(&mut self, f: &Expr) -> syn::Result<Carry> {
        let r = f.range();
        let s = self.state.clone();
        match f {
            Expr::Name(i) if *i == "gamma" && self.decl(i).is_none() => {
                Ok(Carry::Decay(Decay::Constant(ConstantRate::Retnet), r))
            }
            Expr::Name(i) if *i == "I" => Err(r.error(
                "`I` alone changes nothing; the identity appears in the delta rule `(I - beta * k * k^T)`",
            )),
            Expr::Name(i) => {
                let (_, kind) = self.lookup(i)?;
                let name = i.unraw();
                Err(r.error(match kind {
                    Kind::LogGate => format!("`{name}` is a log-space gate: its decay factor is `exp({name})`"),
                    Kind::LogGateK => format!("`{name}` is a log-space gate over K: its decay factor is `Diag(exp({name}))`"),
                    Kind::LogRate => format!("`{name}` is a log-space rate: its decay factor is `exp({name})`"),
                    Kind::Scalar => format!(
                        "a decay comes from a log-space gate, but `{name}` is declared `scalar`; declare `{name}: log_gate` (g <= 0) and write `exp({name}) * {s}`"
                    ),
                    k => format!(
                        "`{name}` (declared `{}`) cannot act on the state; allowed before the state: {CARRY_FACTORS}",
                        k.text()
                    ),
                }))
            }
            Expr::Call { func, args, .. } if *func == "exp" => {
                let Some(arg) = single_name(args) else {
                    return Err(r.error(
                        "`exp` takes one log-space gate input, e.g. `exp(g)`; fold any arithmetic into the gate itself",
                    ));
                };
                if *arg == "gamma" && self.decl(arg).is_none() {
                    return Err(r.error(format!(
                        "`gamma` is RetNet's decay factor itself: write `gamma * {s}`"
                    )));
                }
                let (i, kind) = self.lookup(arg)?;
                let name = arg.unraw();
                match kind {
                    Kind::LogGate => {
                        self.assign(i, Role::Gate, Range::one(arg.span()))?;
                        Ok(Carry::Decay(Decay::Scalar, r))
                    }
                    Kind::LogRate => {
                        self.assign(i, Role::DecayRate, Range::one(arg.span()))?;
                        Ok(Carry::Decay(Decay::Constant(ConstantRate::Input), r))
                    }
                    Kind::LogGateK => Err(r.error(format!(
                        "`{name}` is a gate over K (`log_gate[K]`): its decay is the diagonal `Diag(exp({name}))`"
                    ))),
                    Kind::Scalar => Err(Range::one(arg.span()).error(format!(
                        "`exp` takes a log-space gate, but `{name}` is declared `scalar`; declare `{name}: log_gate` for a scalar decay (or `log_rate` for a constant per-head one)"
                    ))),
                    k => Err(Range::one(arg.span()).error(format!(
                        "`exp` takes a log-space gate (`log_gate` or `log_rate`), but `{name}` is declared `{}`",
                        k.text()
                    ))),
                }
            }
            Expr::Call { func, args, .. } if *func == "Diag" => {
                let inner = match args.as_slice() {
                    [Expr::Call { func, args, .. }] if *func == "exp" => single_name(args),
                    _ => None,
                };
                let Some(arg) = inner else {
                    return Err(r.error(
                        "`Diag` takes the exp of a gate over K: `Diag(exp(g))` with `g: log_gate[K]`",
                    ));
                };
                let (i, kind) = self.lookup(arg)?;
                let name = arg.unraw();
                match kind {
                    Kind::LogGateK => {
                        self.assign(i, Role::Gate, Range::one(arg.span()))?;
                        Ok(Carry::Decay(Decay::Diagonal, r))
                    }
                    Kind::LogGate => Err(Range::one(arg.span()).error(format!(
                        "`Diag(exp({name}))` needs a gate over K: declare `{name}: log_gate[K]`, or write `exp({name})` for a scalar decay"
                    ))),
                    Kind::Scalar => Err(Range::one(arg.span()).error(format!(
                        "`exp` takes a log-space gate, but `{name}` is declared `scalar`; declare `{name}: log_gate[K]` for a diagonal decay"
                    ))),
                    k => Err(Range::one(arg.span()).error(format!(
                        "`Diag(exp(..))` takes a log-space gate over K (`log_gate[K]`), but `{name}` is declared `{}`",
                        k.text()
                    ))),
                }
            }
            Expr::Call { func, .. } => Err(Range::one(func.span()).error(format!(
                "unknown function `{func}` before the state; allowed: {CARRY_FACTORS}"
            ))),
            Expr::Paren { inner, range } => self.delta(inner, *range),
            Expr::Num { .. } => Err(r.error(
                "a constant factor is not a supported decay; for a constant per-head decay use `gamma` (RetNet's schedule) or `exp(a)` with `a: log_rate`",
            )),
            other => Err(r.error(format!(
                "unsupported factor `{}` before the state; allowed: {CARRY_FACTORS}",
                text(other)
            ))),
        }
    }

    /// `(I - beta * k * k^T)`.
    fn delta(&mut self, inner: &Expr, range: Range) -> syn::Result<Carry> {
        let terms = inner.terms();
        let rank1 = match terms.as_slice() {
            [(None, first), (Some(sign), second)] if first.name().is_some_and(|i| *i == "I") => {
                if !sign.minus {
                    return Err(Range::one(sign.span)
                        .error("the delta rule subtracts: `(I - beta * k * k^T)`"));
                }
                *second
            }
            _ => {
                return Err(range.error(format!(
                    "a parenthesised factor before the state is the delta rule `(I - beta * k * k^T)`; found `({})`",
                    text(inner)
                )));
            }
        };
        let mut beta: Option<(usize, &Ident)> = None;
        let mut left: Option<(usize, &Ident, usize)> = None;
        let mut right: Option<(usize, &Ident, usize)> = None;
        for (pos, f) in flat_factors(rank1).into_iter().enumerate() {
            let fr = f.range();
            match f {
                Expr::Name(i) => {
                    let (d, kind) = self.lookup(i)?;
                    match kind {
                        Kind::Scalar if beta.is_none() => beta = Some((d, i)),
                        Kind::Scalar => {
                            return Err(
                                fr.error("the delta rule has one beta: `(I - beta * k * k^T)`")
                            );
                        }
                        Kind::VecK if left.is_none() => left = Some((d, i, pos)),
                        Kind::VecV => {
                            return Err(fr.error(format!(
                                "`{}` is declared `[V]`, but the delta rule's rank-one term `k * k^T` is over K: use the key (`[K]`)",
                                i.unraw()
                            )));
                        }
                        Kind::LogGate | Kind::LogGateK | Kind::LogRate => {
                            return Err(fr.error(format!(
                                "the delta rule's strength is a plain `scalar` beta, but `{}` is declared `{}` (log-space); declare a `beta: scalar` input",
                                i.unraw(),
                                kind.text()
                            )));
                        }
                        _ => {
                            return Err(fr.error(format!(
                                "`{}` has no place in the delta rule `(I - beta * k * k^T)`",
                                i.unraw()
                            )));
                        }
                    }
                }
                Expr::Transpose { inner, .. } if inner.name().is_some() && right.is_none() => {
                    let Some(i) = inner.name() else { continue };
                    let (d, kind) = self.lookup(i)?;
                    if kind != Kind::VecK {
                        return Err(fr.error(format!(
                            "`{}` is declared `{}`, but the delta rule's rank-one term `k * k^T` is over K: use the key (`[K]`)",
                            i.unraw(),
                            kind.text()
                        )));
                    }
                    right = Some((d, i, pos));
                }
                _ => {
                    return Err(fr.error(format!(
                        "unsupported factor `{}` in the delta rule; it is `(I - beta * k * k^T)`",
                        text(f)
                    )));
                }
            }
        }
        let (Some((kd, k, lp)), Some((rd, kt, rp))) = (left, right) else {
            return Err(rank1.range().error(
                "the delta rule's rank-one term is the outer product of the key with itself: `(I - beta * k * k^T)`",
            ));
        };
        if rp < lp {
            return Err(rank1.range().error(
                "`k^T * k` is a number (an inner product); the delta rule uses the outer product `k * k^T`",
            ));
        }
        if kd != rd {
            return Err(Range::one(kt.span()).error(format!(
                "the delta rule's rank-one term is `{k} * {k}^T`, the same key on both sides; found `{kt}^T`",
                k = k.unraw(),
                kt = kt.unraw()
            )));
        }
        let Some((bd, b)) = beta else {
            return Err(range.error(
                "the delta rule needs its strength beta: write `(I - beta * k * k^T)` with an input `beta: scalar`",
            ));
        };
        self.assign(bd, Role::Beta, Range::one(b.span()))?;
        self.assign(kd, Role::Key, Range::one(k.span()))?;
        Ok(Carry::Delta(range))
    }

    /// `k * v^T` or `beta * k * v^T`.
    fn write(&mut self, term: &Expr) -> syn::Result<(Write, Range)> {
        let range = term.range();
        const FORMS: &str = "`k * v^T` or `beta * k * v^T` (k: [K], v: [V], beta: scalar)";
        let mut beta: Option<(usize, &Ident)> = None;
        let mut left: Option<(usize, &Ident, Kind)> = None;
        let mut right: Option<(usize, &Ident, Kind)> = None;
        for f in flat_factors(term) {
            let fr = f.range();
            match f {
                Expr::Name(i) => {
                    let (d, kind) = self.lookup(i)?;
                    match kind {
                        Kind::Scalar if beta.is_none() => beta = Some((d, i)),
                        Kind::VecK | Kind::VecV if left.is_none() && right.is_none() => {
                            left = Some((d, i, kind))
                        }
                        Kind::VecK | Kind::VecV if right.is_none() => {
                            return Err(fr.error(format!(
                                "the write is the outer product `k * v^T`: transpose the value, `{}^T`",
                                i.unraw()
                            )));
                        }
                        Kind::VecK | Kind::VecV => {
                            return Err(fr.error(format!(
                                "the write is the outer product `k * v^T`; found `{}`",
                                text(term)
                            )));
                        }
                        Kind::LogGate | Kind::LogGateK | Kind::LogRate => {
                            return Err(fr.error(format!(
                                "`{}` is a log-space gate; gates decay the state (`exp(g) * S`) and do not scale the write, which is {FORMS}",
                                i.unraw()
                            )));
                        }
                        _ => {
                            return Err(fr.error(format!(
                                "`{}` (declared `{}`) has no place in the write, which is {FORMS}",
                                i.unraw(),
                                kind.text()
                            )));
                        }
                    }
                }
                Expr::Transpose { inner, .. } if inner.name().is_some() && right.is_none() => {
                    let Some(i) = inner.name() else { continue };
                    let (d, kind) = self.lookup(i)?;
                    if left.is_none() {
                        return Err(range.error(format!(
                            "`{}^T * ...` is an inner product (a number); the write is the outer product `k * v^T`",
                            i.unraw()
                        )));
                    }
                    if !matches!(kind, Kind::VecK | Kind::VecV) {
                        return Err(fr.error(format!(
                            "`{}` is declared `{}`; the write is {FORMS}",
                            i.unraw(),
                            kind.text()
                        )));
                    }
                    right = Some((d, i, kind));
                }
                Expr::Num { .. } => {
                    return Err(fr.error(format!(
                        "constant factors are not supported in the write, which is {FORMS}"
                    )));
                }
                other => {
                    return Err(fr.error(format!(
                        "unsupported factor `{}` in the write, which is {FORMS}",
                        text(other)
                    )));
                }
            }
        }
        let (Some((kd, k, kk)), Some((vd, v, vk))) = (left, right) else {
            return Err(range.error(format!("the write is {FORMS}; found `{}`", text(term))));
        };
        match (kk, vk) {
            (Kind::VecK, Kind::VecV) => {}
            (Kind::VecV, Kind::VecK) => {
                return Err(range.error(format!(
                    "the write `{}` is [V, K], but the state `{s}` is [K, V]: write `{} * {}^T`",
                    text(term),
                    v.unraw(),
                    k.unraw(),
                    s = self.state
                )));
            }
            (Kind::VecK, _) => {
                return Err(Range::one(v.span()).error(format!(
                    "`{v}` is declared `[K]`, but the right factor of the write `k * v^T` is the value, which is `[V]` (the state `{s}` is [K, V]); declare `{v}: [V]`",
                    v = v.unraw(),
                    s = self.state
                )));
            }
            _ => {
                return Err(Range::one(k.span()).error(format!(
                    "`{k}` is declared `[V]`, but the left factor of the write `k * v^T` is the key, which is `[K]` (the state `{s}` is [K, V]); declare `{k}: [K]`",
                    k = k.unraw(),
                    s = self.state
                )));
            }
        }
        self.assign(kd, Role::Key, Range::one(k.span()))?;
        self.assign(vd, Role::Value, Range::one(v.span()))?;
        let form = match beta {
            Some((bd, b)) => {
                self.assign(bd, Role::Beta, Range::one(b.span()))?;
                Write::BetaOuter
            }
            None => Write::Outer,
        };
        Ok((form, range))
    }

    // ---------------------------------------------------------------- the read

    fn read(&mut self, rhs: &Expr) -> syn::Result<ReadForm> {
        let range = rhs.range();
        let s = self.state.clone();
        let factors = rhs.factors();
        let mut scales = factors.iter().filter(|f| is_scale(f));
        if scales.next().is_none() {
            return Err(range.error(format!(
                "the read ends with `* scale`: `o = {s}^T * q * scale` (the scale is K^-1/2 unless a line `scale = ...;` sets it; `scale = 1.0;` makes the read unscaled)"
            )));
        }
        if let Some(second) = scales.next() {
            return Err(second
                .range()
                .error("`scale` appears twice; the read is scaled once"));
        }
        let rest: Vec<&Expr> = factors.into_iter().filter(|f| !is_scale(f)).collect();
        let terms: Vec<(Option<crate::syntax::Sign>, Vec<&Expr>)> = match rest.as_slice() {
            [single] => single
                .unparen()
                .terms()
                .into_iter()
                .map(|(sg, t)| (sg, flat_factors(t)))
                .collect(),
            _ => vec![(None, rest)],
        };
        let mut state_term: Option<(bool, &Ident, Range)> = None;
        let mut bonus: Option<(&[Expr], Range, &Ident, Range)> = None;
        for (sign, factors) in &terms {
            if let Some(sign) = sign.filter(|s| s.minus) {
                return Err(Range::one(sign.span).error(format!(
                    "the read adds its terms; a subtracted term is not a supported form; allowed: {READS}"
                )));
            }
            match self.read_term(factors, range)? {
                ReadTerm::State { prev, query, range } => {
                    if state_term.is_some() {
                        return Err(
                            range.error(format!("the read reads the state once; allowed: {READS}"))
                        );
                    }
                    state_term = Some((prev, query, range));
                }
                ReadTerm::Bonus {
                    sum_args,
                    sum_range,
                    value,
                    range,
                } => {
                    if bonus.is_some() {
                        return Err(range.error("a second bonus term; the read has at most one"));
                    }
                    bonus = Some((sum_args, sum_range, value, range));
                }
            }
        }
        let Some((prev, query, _)) = state_term else {
            return Err(range.error(format!(
                "the read does not read the state; allowed: {READS}"
            )));
        };
        let (qd, _) = self.lookup(query)?;
        self.assign(qd, Role::Query, Range::one(query.span()))?;
        match (prev, bonus) {
            (false, None) => Ok(ReadForm {
                read: Read::Inclusive,
                range,
            }),
            (true, None) => Err(range.error(format!(
                "the exclusive read `{s}_prev^T * {q}` needs the bonus for the current token: `o = ({s}_prev^T * {q} + sum({q} * u * k) * v) * scale` (rwkv6); the inclusive read is `o = {s}^T * {q} * scale`",
                q = query.unraw()
            ))),
            (false, Some((args, _, value, brange))) => Err(brange.error(format!(
                "a bonus on an inclusive read: `{s}^T * {q}` already contains the current token; the bonus `sum({}) * {}` goes with the exclusive read `{s}_prev^T * {q}`",
                args.iter().map(text).collect::<Vec<_>>().join(", "),
                value.unraw(),
                q = query.unraw()
            ))),
            (true, Some((args, sum_range, value, _))) => {
                self.bonus(args, sum_range, query)?;
                let (vd, vk) = self.lookup(value)?;
                if vk != Kind::VecV {
                    return Err(Range::one(value.span()).error(format!(
                        "`{}` is declared `{}`, but the bonus `sum(q * u * k) * v` ends with the value, which is `[V]`",
                        value.unraw(),
                        vk.text()
                    )));
                }
                self.assign(vd, Role::Value, Range::one(value.span()))?;
                Ok(ReadForm {
                    read: Read::ExclusiveBonus,
                    range,
                })
            }
        }
    }

    fn read_term<'e>(&self, factors: &[&'e Expr], whole: Range) -> syn::Result<ReadTerm<'e>> {
        let s = &self.state;
        let range = match (factors.first(), factors.last()) {
            (Some(a), Some(b)) => Range::to(a.range(), b.range()),
            _ => {
                return Err(whole.error(format!(
                    "the read does not read the state; allowed: {READS}"
                )));
            }
        };
        let state_of = |e: &Expr| -> Option<bool> {
            let i = e.name()?;
            if *i == self.state.as_str() {
                Some(false)
            } else if *i == self.state_prev.as_str() {
                Some(true)
            } else {
                None
            }
        };
        let transposed = |e: &'e Expr| -> Option<&'e Expr> {
            match e {
                Expr::Transpose { inner, .. } => Some(inner),
                _ => None,
            }
        };
        match factors {
            // S^T * q
            [a, b] if transposed(a).and_then(state_of).is_some() && b.name().is_some() => {
                let prev = transposed(a).and_then(state_of).unwrap_or(false);
                let q = b.name().ok_or_else(|| range.error("expected the query"))?;
                self.query_kind(q)?;
                Ok(ReadTerm::State {
                    prev,
                    query: q,
                    range,
                })
            }
            // q^T * S
            [a, b] if state_of(b).is_some() && transposed(a).and_then(|x| x.name()).is_some() => {
                let prev = state_of(b).unwrap_or(false);
                let q = transposed(a)
                    .and_then(|x| x.name())
                    .ok_or_else(|| range.error("expected the query"))?;
                self.query_kind(q)?;
                Ok(ReadTerm::State {
                    prev,
                    query: q,
                    range,
                })
            }
            [a, b] if state_of(a).is_some() && b.name().is_some() => Err(range.error(format!(
                "the state `{s}` is [K, V] and the query [K]: the read is `{}^T * {}`",
                text(a),
                text(b)
            ))),
            // sum(q * u * k) * v, or v * sum(q * u * k)
            [a, b] if is_sum(a) || is_sum(b) => {
                let (sum, v) = if is_sum(a) { (a, b) } else { (b, a) };
                let Expr::Call { args, .. } = sum else {
                    return Err(range.error("expected `sum(..)`"));
                };
                let Some(v) = v.name() else {
                    return Err(v.range().error(
                        "the bonus is `sum(q * u * k) * v`: the summed product times the value",
                    ));
                };
                Ok(ReadTerm::Bonus {
                    sum_args: args,
                    sum_range: sum.range(),
                    value: v,
                    range,
                })
            }
            _ => {
                let unknown = |i: &Ident| self.decl(i).is_none() && !self.is_state(i);
                if let Some(i) = factors.iter().find_map(|f| f.any_name(&unknown)) {
                    return Err(self.unknown(i));
                }
                Err(range.error(format!(
                    "unsupported read term `{}`; allowed: {READS}",
                    factors
                        .iter()
                        .map(|f| text(f))
                        .collect::<Vec<_>>()
                        .join(" * ")
                )))
            }
        }
    }

    fn query_kind(&self, q: &Ident) -> syn::Result<()> {
        let (_, kind) = self.lookup(q)?;
        if kind != Kind::VecK {
            return Err(Range::one(q.span()).error(format!(
                "`{}` is declared `{}`, but the read `{}^T * q` needs the query, which is `[K]`",
                q.unraw(),
                kind.text(),
                self.state
            )));
        }
        Ok(())
    }

    /// The arguments of `sum(q * u * k)`: the query, the bonus and the key in any order.
    fn bonus(&mut self, args: &[Expr], range: Range, query: &Ident) -> syn::Result<()> {
        const FORM: &str = "the bonus is `sum(q * u * k) * v`: the element-wise product of the query, the bonus `u: per_head[K]` and the key, summed over K, times the value";
        let [arg] = args else {
            return Err(range.error(FORM));
        };
        let factors = flat_factors(arg);
        let names: Option<Vec<&Ident>> = factors.iter().map(|f| f.name()).collect();
        let Some(names) = names.filter(|n| n.len() == 3) else {
            return Err(arg.range().error(FORM));
        };
        let mut saw_query = false;
        let mut saw_bonus = false;
        let mut saw_key = false;
        for n in names {
            let (d, kind) = self.lookup(n)?;
            let at = Range::one(n.span());
            if kind == Kind::HeadK && !saw_bonus {
                self.assign(d, Role::Bonus, at)?;
                saw_bonus = true;
            } else if n.unraw() == query.unraw() && !saw_query {
                saw_query = true;
            } else if kind == Kind::VecK && !saw_key {
                self.assign(d, Role::Key, at)?;
                saw_key = true;
            } else {
                return Err(at.error(format!("`{}` does not fit: {FORM}", n.unraw())));
            }
        }
        if !(saw_query && saw_bonus && saw_key) {
            return Err(arg.range().error(FORM));
        }
        Ok(())
    }

    fn l2norm(&mut self, args: &[Ident], range: Range) -> syn::Result<()> {
        const FORM: &str = "l2norm normalises the query and the key together, in the kernel (fla's use_qk_l2norm_in_kernel): write `l2norm(q, k);`";
        if args.len() != 2 {
            return Err(range.error(FORM));
        }
        let mut roles = Vec::new();
        for a in args {
            let (d, _) = self.lookup(a)?;
            match self.decls[d].role {
                Some((r @ (Role::Query | Role::Key), _)) if !roles.contains(&r) => roles.push(r),
                _ => {
                    return Err(Range::one(a.span()).error(format!(
                        "`{}` is not the query or the key: {FORM}",
                        a.unraw()
                    )));
                }
            }
        }
        Ok(())
    }
}

fn single_name(args: &[Expr]) -> Option<&Ident> {
    match args {
        [Expr::Name(i)] => Some(i),
        _ => None,
    }
}

fn is_scale(e: &Expr) -> bool {
    e.name().is_some_and(|i| *i == "scale")
}

fn is_sum(e: &Expr) -> bool {
    matches!(e, Expr::Call { func, .. } if *func == "sum")
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    #[test]
    fn snake_case_names() {
        for (camel, snake) in [
            ("GatedDeltaNet", "gated_delta_net"),
            ("LinearAttn", "linear_attn"),
            ("SimpleGla", "simple_gla"),
            ("Hgrn2", "hgrn2"),
            ("HGRN2", "hgrn2"),
            ("Rwkv6", "rwkv6"),
            ("KDA", "kda"),
            ("HTTPServer", "http_server"),
            ("Mamba2Ssd", "mamba2_ssd"),
            ("gla", "gla"),
            ("Gated_Delta", "gated_delta"),
        ] {
            assert_eq!(snake_case(camel), snake, "{camel}");
        }
    }
}
