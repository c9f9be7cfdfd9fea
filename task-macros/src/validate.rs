//! Checking that the function under `#[task]` can be a task, and taking it
//! apart into the pieces the expansion needs ([`TaskFn`]).
//!
//! Every problem is recorded in the [`Ctxt`] with a span on the user's
//! offending token; checking goes on after a problem so all are reported.

use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::visit::{self, Visit};
use syn::{
    Attribute, FnArg, GenericParam, Ident, ItemFn, Meta, Pat, PatIdent, ReturnType, Token, Type,
    TypeImplTrait, TypeReference,
};

use crate::ctxt::Ctxt;

/// Why arguments must be owned: the start of every message about their types.
const OWNED: &str = "task arguments must be owned types (they are deserialized from the message)";

/// Why arguments must be plain names: the start of every message about patterns.
const NAMED: &str = "task arguments must be plain names, which callers use to pass them by keyword";

/// A function accepted as a task.
pub(crate) struct TaskFn {
    /// The function as written; its signature and body become `run`.
    pub(crate) func: ItemFn,
    /// `async fn` (else the body runs on the blocking pool).
    pub(crate) is_async: bool,
    /// The parameters, in order.
    pub(crate) params: Vec<Param>,
    /// The declared return type, `()` when there is none.
    pub(crate) output: Type,
    /// The user's attributes, sorted by the generated items they go on.
    pub(crate) attrs: FnAttrs,
}

/// One parameter of a task.
pub(crate) struct Param {
    /// The name as written, without `mut`.
    pub(crate) ident: Ident,
    /// The name callers use as a keyword (`r#type` is `type`).
    pub(crate) name: String,
    /// The declared type.
    pub(crate) ty: Type,
    /// Where its value comes from.
    pub(crate) kind: ParamKind,
}

/// Where a parameter's value comes from.
pub(crate) enum ParamKind {
    /// The call's arguments (by position or keyword).
    Argument,
    /// `State<T>`: the shared value of type `T` the worker provides.
    State(Box<Type>),
    /// `TaskContext`: the running task's context.
    Context,
    /// `FailedTask`, an errback's first parameter: the argument callers pass
    /// (the failed task's id), with the failure the message carries.
    FailedTask,
}

impl Param {
    /// Whether callers pass it (else the worker does).
    pub(crate) fn is_argument(&self) -> bool {
        matches!(self.kind, ParamKind::Argument | ParamKind::FailedTask)
    }
}

/// The kind of a parameter of type `ty`: `State<T>` and `TaskContext` (by
/// their last path segment, as written) are provided by the worker, and a
/// `FailedTask` is read from the argument and the message.
fn param_kind(cx: &Ctxt, ty: &Type) -> ParamKind {
    let Type::Path(path) = ty else {
        return ParamKind::Argument;
    };
    let Some(last) = path.path.segments.last() else {
        return ParamKind::Argument;
    };
    if path.qself.is_some() {
        return ParamKind::Argument;
    }
    if last.ident == "TaskContext" && last.arguments.is_none() {
        return ParamKind::Context;
    }
    if last.ident == "FailedTask" && last.arguments.is_none() {
        return ParamKind::FailedTask;
    }
    if last.ident != "State" {
        return ParamKind::Argument;
    }
    let inner = match &last.arguments {
        syn::PathArguments::AngleBracketed(args) if args.args.len() == 1 => match &args.args[0] {
            syn::GenericArgument::Type(inner) => Some(inner.clone()),
            _ => None,
        },
        _ => None,
    };
    match inner {
        Some(inner) => ParamKind::State(Box::new(inner)),
        None => {
            cx.error_spanned_by(
                ty,
                "`State` takes the type of the shared value the worker provides: write \
                 `State<T>` (e.g. `State<PgPool>`)",
            );
            ParamKind::Argument
        }
    }
}

/// The user's attributes on the function, by destination.
#[derive(Default)]
pub(crate) struct FnAttrs {
    /// `#[cfg]`: on every generated item.
    pub(crate) cfg: Vec<Attribute>,
    /// `#[doc]`, `#[deprecated]` and lint levels: on the struct.
    pub(crate) on_struct: Vec<Attribute>,
    /// Lint levels and every other attribute (`#[inline]`, `#[tracing::instrument]`,
    /// ...): on `run`, which holds the body.
    pub(crate) on_run: Vec<Attribute>,
}

/// Checks `func`, recording every problem in `cx`. The result is meaningful
/// only if `cx` holds no error.
pub(crate) fn task_fn(cx: &Ctxt, mut func: ItemFn) -> TaskFn {
    check_signature(cx, &func);
    let params = params(cx, &func.sig.ident, &func.sig.inputs);
    let output = match &func.sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    let attrs = sort_attrs(std::mem::take(&mut func.attrs));
    TaskFn {
        is_async: func.sig.asyncness.is_some(),
        func,
        params,
        output,
        attrs,
    }
}

/// Everything about the signature but its parameters.
fn check_signature(cx: &Ctxt, func: &ItemFn) {
    let sig = &func.sig;
    if let Some(token) = &sig.constness {
        cx.error_spanned_by(
            token,
            "tasks cannot be `const fn`: a task runs when a message arrives, not at compile time",
        );
    }
    if let Some(token) = &sig.unsafety {
        cx.error_spanned_by(
            token,
            "tasks cannot be `unsafe fn`: a worker calls them with whatever a message holds, \
             so no caller can uphold a safety contract",
        );
    }
    if let Some(abi) = &sig.abi {
        cx.error_spanned_by(
            abi,
            "tasks cannot declare an ABI: they are called by the worker as Rust functions",
        );
    }
    for param in &sig.generics.params {
        let message = match param {
            GenericParam::Lifetime(_) => {
                "tasks cannot be generic: a task's arguments are decoded into owned values, \
                 so they cannot borrow for a lifetime"
            }
            GenericParam::Type(_) | GenericParam::Const(_) => {
                "tasks cannot be generic: a task is registered once, under one name, and \
                 its arguments are decoded into concrete types"
            }
        };
        cx.error_spanned_by(param, message);
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        cx.error_spanned_by(
            where_clause,
            "tasks cannot be generic: a task cannot have a `where` clause",
        );
    }
    if let Some(variadic) = &sig.variadic {
        cx.error_spanned_by(
            variadic,
            "tasks cannot be variadic: a task has a fixed list of named arguments",
        );
    }
}

/// The parameters, each a plain (possibly `mut`) name with an owned type.
fn params(cx: &Ctxt, task: &Ident, inputs: &Punctuated<FnArg, Token![,]>) -> Vec<Param> {
    let mut params = Vec::new();
    for input in inputs {
        let arg = match input {
            FnArg::Receiver(receiver) => {
                cx.error_spanned_by(receiver, "tasks are free functions; `self` is not allowed");
                continue;
            }
            FnArg::Typed(arg) => arg,
        };
        for attr in &arg.attrs {
            if attr.path().is_ident("cfg") || attr.path().is_ident("cfg_attr") {
                cx.error_spanned_by(
                    attr,
                    "task arguments cannot be conditional: callers pass them by position, \
                     which must not depend on the build",
                );
            }
        }
        OwnedTypes { cx }.visit_type(&arg.ty);
        match &*arg.pat {
            Pat::Ident(PatIdent {
                by_ref: None,
                subpat: None,
                ident,
                ..
            }) => {
                // The task's unit struct is in scope in the body, where a
                // binding of the same name would be a pattern matching it.
                if ident.unraw() == task.unraw() {
                    cx.error_spanned_by(
                        ident,
                        format!(
                            "a task argument cannot have the task's name: `{task}` is also the \
                             task's unit struct, which a binding of that name would match; \
                             rename the argument"
                        ),
                    );
                }
                params.push(Param {
                    ident: ident.clone(),
                    name: ident.unraw().to_string(),
                    ty: (*arg.ty).clone(),
                    kind: param_kind(cx, &arg.ty),
                });
            }
            Pat::Wild(_) => cx.error_spanned_by(
                &arg.pat,
                format!("{NAMED}: give this argument a name (`_name` if it is unused)"),
            ),
            Pat::Ident(PatIdent {
                by_ref: Some(by_ref),
                subpat: None,
                ..
            }) => cx.error_spanned_by(
                by_ref,
                format!("{NAMED}: remove `ref`, the task owns its arguments"),
            ),
            pattern => cx.error_spanned_by(
                pattern,
                format!("{NAMED}: bind this argument to a name and destructure it in the body"),
            ),
        }
    }
    // Celery passes an errback the failed task's id first.
    for param in params.iter().filter(|p| p.is_argument()).skip(1) {
        if matches!(param.kind, ParamKind::FailedTask) {
            cx.error_spanned_by(
                &param.ty,
                "`FailedTask` is an errback's first argument: the failed task's id comes before \
                 the errback's own arguments",
            );
        }
    }
    params
}

/// Finds borrowed and `impl Trait` types anywhere in a parameter's type.
struct OwnedTypes<'a> {
    cx: &'a Ctxt,
}

impl<'ast> Visit<'ast> for OwnedTypes<'_> {
    fn visit_type_reference(&mut self, reference: &'ast TypeReference) {
        let hint =
            match &*reference.elem {
                Type::Path(path) if path.qself.is_none() && path.path.is_ident("str") => {
                    "use `String` instead of `&str`"
                }
                Type::Slice(_) => "use `Vec<T>` instead of `&[T]`",
                Type::Path(path)
                    if path.path.segments.last().is_some_and(|last| {
                        last.ident == "TaskContext" || last.ident == "State"
                    }) =>
                {
                    self.cx.error_spanned_by(
                        reference,
                        "`TaskContext` and `State<T>` parameters are taken by value: the worker \
                     hands each run its own (a cheap handle)",
                    );
                    return;
                }
                _ => "take the value instead of a reference",
            };
        self.cx
            .error_spanned_by(reference, format!("{OWNED}: {hint}"));
    }

    fn visit_type_impl_trait(&mut self, impl_trait: &'ast TypeImplTrait) {
        self.cx.error_spanned_by(
            impl_trait,
            format!("{OWNED}: `impl Trait` is not a type a message can be decoded into"),
        );
    }

    fn visit_type(&mut self, ty: &'ast Type) {
        // Function pointer types are not deserializable anyway, and their own
        // `&` parameters are not the task's arguments: let the compiler say so.
        if !matches!(ty, Type::BareFn(_)) {
            visit::visit_type(self, ty);
        }
    }
}

/// Sorts the user's attributes by the generated items they belong on.
fn sort_attrs(attrs: Vec<Attribute>) -> FnAttrs {
    let mut sorted = FnAttrs::default();
    for attr in attrs {
        match Destination::of(&attr) {
            Destination::Everywhere => sorted.cfg.push(attr),
            Destination::Struct => sorted.on_struct.push(attr),
            Destination::StructAndRun => {
                sorted.on_struct.push(attr.clone());
                sorted.on_run.push(attr);
            }
            Destination::Run => sorted.on_run.push(attr),
        }
    }
    sorted
}

/// Where one of the user's attributes goes.
enum Destination {
    /// `#[cfg]`.
    Everywhere,
    /// `#[doc]`, `#[deprecated]`: describe the task, which the struct is.
    Struct,
    /// `#[allow]`, `#[warn]`, `#[deny]`, `#[forbid]`.
    StructAndRun,
    /// Anything else, including `#[expect]` (which would be unfulfilled on
    /// one of two items) and attributes meant for a function.
    Run,
}

impl Destination {
    fn of(attr: &Attribute) -> Self {
        let path = attr.path();
        if path.is_ident("cfg") {
            Self::Everywhere
        } else if path.is_ident("cfg_attr") {
            // `#[cfg_attr(docsrs, doc(cfg(...)))]` belongs with the docs.
            Self::of_cfg_attr(attr).unwrap_or(Self::Run)
        } else {
            Self::of_path(path)
        }
    }

    fn of_path(path: &syn::Path) -> Self {
        let is = |name: &str| path.is_ident(name);
        if is("doc") || is("deprecated") {
            Self::Struct
        } else if is("allow") || is("warn") || is("deny") || is("forbid") {
            Self::StructAndRun
        } else {
            Self::Run
        }
    }

    /// The destination of the attributes a `cfg_attr` expands to, when they
    /// all agree.
    fn of_cfg_attr(attr: &Attribute) -> Option<Self> {
        let metas = attr
            .parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
            .ok()?;
        let mut inner = metas.iter().skip(1).map(|meta| Self::of_path(meta.path()));
        let first = inner.next()?;
        inner
            .all(|other| std::mem::discriminant(&other) == std::mem::discriminant(&first))
            .then_some(first)
    }
}
