//! Code generation: from a checked [`TaskFn`] and its [`TaskAttr`] to the
//! task struct, its methods, its `Task` impl and its registration.

use proc_macro2::{Delimiter, Group, Literal, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Ident, Item, ItemFn, Path};

use crate::attr::TaskAttr;
use crate::ctxt::Ctxt;
use crate::validate::{self, ParamKind, TaskFn};

/// `#[task(attr)] item`: the expansion, or on any error the item unchanged
/// (so the IDE still knows the function) followed by every error.
pub(crate) fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let attr = TaskAttr::parse(&cx, attr);
    let task = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(func) => Some(validate::task_fn(&cx, func)),
        Err(_) => {
            cx.syn_error(not_a_function(&item));
            None
        }
    };
    match (cx.check(), task) {
        (Ok(()), Some(task)) => expand(&attr, &task),
        (checked, _) => {
            let mut tokens = item;
            if let Err(errors) = checked {
                tokens.extend(errors.into_compile_error());
            }
            tokens
        }
    }
}

/// The error for `#[task]` on anything but a function, pointing at the
/// item's keyword and name when it has them.
fn not_a_function(item: &TokenStream) -> syn::Error {
    const MESSAGE: &str = "`#[task]` can only be applied to a function (`async fn` or `fn`)";
    fn head(keyword: impl ToTokens, ident: &Ident) -> TokenStream {
        quote!(#keyword #ident)
    }
    let head = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Struct(item)) => head(item.struct_token, &item.ident),
        Ok(Item::Enum(item)) => head(item.enum_token, &item.ident),
        Ok(Item::Union(item)) => head(item.union_token, &item.ident),
        Ok(Item::Trait(item)) => head(item.trait_token, &item.ident),
        Ok(Item::Mod(item)) => head(item.mod_token, &item.ident),
        Ok(Item::Const(item)) => head(item.const_token, &item.ident),
        Ok(Item::Static(item)) => head(item.static_token, &item.ident),
        Ok(Item::Type(item)) => head(item.type_token, &item.ident),
        Ok(Item::Impl(item)) => item.impl_token.to_token_stream(),
        _ => item.clone(),
    };
    syn::Error::new_spanned(head, MESSAGE)
}

fn expand(attr: &TaskAttr, task: &TaskFn) -> TokenStream {
    let krate: Path = attr
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::task_core));
    let func = &task.func;
    let ident = &func.sig.ident;
    let vis = &func.vis;
    let cfg = &task.attrs.cfg;
    let struct_attrs = &task.attrs.on_struct;
    let run_attrs = &task.attrs.on_run;

    // `run` is the user's function with a `&self` receiver: same parameters
    // (`mut` and parameter attributes included), same return type, same body.
    let mut run_sig = func.sig.clone();
    run_sig.ident = Ident::new("run", ident.span());
    run_sig.inputs.insert(0, syn::parse_quote!(&self));
    let body = &func.block;

    // `s` and `delay` take the arguments callers pass; `run` takes every
    // parameter, the worker-provided ones (`State<T>`, `TaskContext`) too.
    let params: Vec<_> = task.params.iter().filter(|p| p.is_argument()).collect();
    let arg_idents: Vec<_> = params.iter().map(|param| &param.ident).collect();
    let arg_types: Vec<_> = params.iter().map(|param| &param.ty).collect();
    let arg_names: Vec<_> = params.iter().map(|param| &param.name).collect();

    // Every generated use of the return type is located at it, so that a
    // return type that is not `TaskReturn` is reported at the user's type
    // (with the trait's own message) rather than at `#[task]`.
    let ret = &task.output;
    let ret_span = ret.span();
    let output = locate(quote!(<#ret as #krate::TaskReturn>::Output), ret_span);
    // `s` and `delay` are generic over their result type `R`, pinned to the
    // task's output by their `where` clause (so `add.s(2, 3)` infers it):
    // naming `<Self as Task>::Output` in their signatures would report a
    // return type that is not `TaskReturn` once more for each of them.
    let result = Ident::new("R", Span::mixed_site());
    let task_output = quote!(#result);
    let result_bound = locate(
        quote!(where Self: #krate::Task<Output = #result>, #result: #krate::__private::TaskResult),
        ret_span,
    );
    let of_task = quote!(#krate::Signature::of_task::<Self>());
    let s_ret = locate(quote!(#krate::Signature<#task_output>), ret_span);
    let delay_ret = locate(
        quote!(::core::result::Result<#krate::AsyncResult<#task_output>, #krate::Error>),
        ret_span,
    );
    let output_item = locate(quote!(type Output = #output;), ret_span);

    let unraw = ident.unraw().to_string();
    let s_doc = format!(
        " Builds a call of this task, to send later or with options \
         (Celery's `{unraw}.s(...)`)."
    );
    let delay_doc = format!(
        " Publishes a call of this task through the default app and returns \
         once the broker confirmed it (Celery's `{unraw}.delay(...)`)."
    );

    // `partial` (tasks with an argument) takes every argument but the first,
    // which the previous step of a chain supplies: its type is the
    // `Partial`'s input, so a chain checks that steps fit at compile time.
    let partial = params.split_first().map(|(first, rest)| {
        let first_ty = &first.ty;
        let rest_idents: Vec<_> = rest.iter().map(|param| &param.ident).collect();
        let rest_types: Vec<_> = rest.iter().map(|param| &param.ty).collect();
        let partial_path = locate(quote!(#krate::canvas::Partial), ret_span);
        let partial_ret = quote!(#partial_path<#first_ty, #task_output>);
        let first_name = &first.name;
        let partial_doc = format!(
            " Builds a chain step calling this task with every argument but its \
             first, `{first_name}`, which the previous step's result supplies \
             (Celery's `{unraw}.s(...)` inside a chain)."
        );
        quote! {
            #[doc = #partial_doc]
            #[allow(dead_code)]
            #vis fn partial<#result>(
                &self,
                #(#rest_idents: #rest_types),*
            ) -> #partial_ret #result_bound {
                #partial_path::new(#of_task #(.arg(#rest_idents))*)
            }
        }
    });

    let name = match &attr.name {
        Some(name) => name.to_token_stream(),
        None => quote!(::core::concat!(::core::module_path!(), "::", #unraw)),
    };

    let mut options = quote!(#krate::TaskOptions::DEFAULT);
    if let Some(queue) = &attr.queue {
        options.extend(quote!(.with_queue(#queue)));
    }
    if let Some(track_started) = &attr.track_started {
        options.extend(quote!(.with_track_started(#track_started)));
    }
    if !task.is_async {
        options.extend(quote!(.with_blocking(true)));
    }
    if let Some(early_ack) = &attr.early_ack {
        options.extend(quote!(.with_early_ack(#early_ack)));
    }
    if let Some(limit) = &attr.time_limit {
        let millis = Literal::u64_unsuffixed(limit.millis);
        options.extend(quote!(.with_time_limit_ms(#millis)));
    }
    if let Some(limit) = &attr.soft_time_limit {
        let millis = Literal::u64_unsuffixed(limit.millis);
        options.extend(quote!(.with_soft_time_limit_ms(#millis)));
    }
    if let Some(retry) = retry_policy(&krate, attr) {
        options.extend(quote!(.with_retry(#retry)));
    }
    if let Some(rate) = &attr.rate_limit {
        let count = Literal::u32_unsuffixed(rate.count);
        let period = Literal::u64_unsuffixed(rate.period_secs);
        options.extend(quote! {
            .with_rate_limit(#krate::RateLimit::new(
                #count,
                ::core::time::Duration::from_secs(#period),
            ))
        });
    }
    let handler = handler(&krate, task);
    let states = task.params.iter().filter_map(|param| match &param.kind {
        ParamKind::State(inner) => {
            Some(quote_spanned!(inner.span()=> #krate::StateType::of::<#inner>()))
        }
        _ => None,
    });
    let states = quote!(&[#(#states),*]);

    quote! {
        #(#struct_attrs)*
        #(#cfg)*
        #[allow(non_camel_case_types)]
        #[derive(
            ::core::fmt::Debug,
            ::core::clone::Clone,
            ::core::marker::Copy,
            ::core::default::Default,
        )]
        #vis struct #ident;

        // `run` holds the user's body, so no lint is silenced around it: the
        // impl names the struct through an alias, on which a `#[deprecated]`
        // task does not warn.
        #(#cfg)*
        const _: () = {
            #[allow(deprecated)]
            type __Task = #ident;

            impl __Task {
                /// Runs the task's body in this process, without a broker.
                #(#run_attrs)*
                #vis #run_sig #body
            }
        };

        #(#cfg)*
        #[allow(deprecated)]
        impl #ident {
            #[doc = #s_doc]
            #[allow(dead_code)]
            #vis fn s<#result>(&self, #(#arg_idents: #arg_types),*) -> #s_ret #result_bound {
                #of_task #(.arg(#arg_idents))*
            }

            #[doc = #delay_doc]
            #[allow(dead_code)]
            #vis async fn delay<#result>(
                &self,
                #(#arg_idents: #arg_types),*
            ) -> #delay_ret #result_bound {
                #of_task #(.arg(#arg_idents))* .apply_async().await
            }

            #partial
        }

        #(#cfg)*
        #[allow(deprecated)]
        impl #krate::Task for #ident {
            const NAME: &'static str = #name;
            const PARAMS: &'static [&'static str] = &[#(#arg_names),*];
            const OPTIONS: #krate::TaskOptions = #options;
            const STATES: &'static [#krate::StateType] = #states;
            #output_item
        }

        #(#cfg)*
        #[allow(deprecated)]
        const _: () = {
            #handler
            #krate::__private::inventory::submit! {
                #krate::TaskRegistration::of::<#ident>(__task_handler)
            }
        };
    }
}

/// `RetryPolicy::DEFAULT` with the retry keys that were given, if any was.
fn retry_policy(krate: &Path, attr: &TaskAttr) -> Option<TokenStream> {
    let some = |value: TokenStream| quote!(::core::option::Option::Some(#value));
    let none = quote!(::core::option::Option::None);
    let mut retry = TokenStream::new();
    if let Some(max_retries) = &attr.max_retries {
        let max_retries = match max_retries {
            Some(max) => some(Literal::u32_unsuffixed(*max).into_token_stream()),
            None => none.clone(),
        };
        retry.extend(quote!(.with_max_retries(#max_retries)));
    }
    if let Some(delay) = &attr.default_retry_delay {
        let millis = Literal::u64_unsuffixed(delay.millis);
        retry.extend(quote!(.with_default_delay_ms(#millis)));
    }
    if let Some(backoff) = &attr.retry_backoff {
        let backoff = match backoff {
            Some(millis) => some(Literal::u64_unsuffixed(*millis).into_token_stream()),
            None => none,
        };
        retry.extend(quote!(.with_backoff_ms(#backoff)));
    }
    if let Some(backoff_max) = &attr.retry_backoff_max {
        let millis = Literal::u64_unsuffixed(backoff_max.millis);
        retry.extend(quote!(.with_backoff_max_ms(#millis)));
    }
    if let Some(jitter) = &attr.retry_jitter {
        retry.extend(quote!(.with_jitter(#jitter)));
    }
    if let Some(autoretry_for) = &attr.autoretry_for {
        let names = &autoretry_for.names;
        if !names.is_empty() {
            retry.extend(quote!(.with_autoretry_for(&[#(#names),*])));
        }
        // Each path must name an error type: a typo, or a type that is not
        // an error, is reported at it (and an import used only there is used).
        let types = autoretry_for
            .paths
            .iter()
            .map(|path| quote_spanned!(path.span()=> #krate::ErrorType::of::<#path>()));
        if !autoretry_for.paths.is_empty() {
            retry.extend(quote!(.with_autoretry_types(&[#(#types),*])));
        }
    }
    (!retry.is_empty()).then(|| quote!(#krate::RetryPolicy::DEFAULT #retry))
}

/// The function a worker calls: decodes each argument (by position, else by
/// keyword), rejects leftovers, runs the body and encodes its result.
fn handler(krate: &Path, task: &TaskFn) -> TokenStream {
    let ident = &task.func.sig.ident;
    // Mixed-site names cannot collide with the user's names (a parameter
    // called `args`, or named like the task itself); numbered locals cannot
    // collide with `args`.
    let args = Ident::new("args", Span::mixed_site());
    let mutability = task
        .params
        .iter()
        .any(|p| p.is_argument())
        .then(|| quote!(mut));
    let locals: Vec<_> = (0..task.params.len())
        .map(|index| format_ident!("arg{}", index, span = Span::mixed_site()))
        .collect();
    let task_name = quote!(<#ident as #krate::Task>::NAME);
    let mut position = 0;
    let takes: Vec<_> = task
        .params
        .iter()
        .zip(&locals)
        .map(|(param, local)| {
            let ty = &param.ty;
            match &param.kind {
                ParamKind::Argument => {
                    let name = &param.name;
                    let index = Literal::usize_unsuffixed(position);
                    position += 1;
                    quote_spanned!(ty.span()=> let #local: #ty = #args.take(#index, #name)?;)
                }
                ParamKind::State(inner) => quote_spanned! {ty.span()=>
                    let #local: #ty = #krate::__private::state::<#inner>(#task_name)?;
                },
                ParamKind::Context => quote_spanned! {ty.span()=>
                    let #local: #ty = #krate::__private::context(#task_name)?;
                },
                ParamKind::FailedTask => {
                    let name = &param.name;
                    let index = Literal::usize_unsuffixed(position);
                    position += 1;
                    quote_spanned! {ty.span()=>
                        let #local: #ty = #krate::__private::failed_task(#args.take(#index, #name)?);
                    }
                }
            }
        })
        .collect();
    // The calls that need `TaskReturn` are located at the return type, like
    // its other uses (see `expand`).
    let ret_span = task.output.span();
    let returned = Ident::new("returned", Span::mixed_site());
    let body = Ident::new("body", Span::mixed_site());
    let error = Ident::new("error", Span::mixed_site());
    // A rejected error type is reported at it when the return type spells
    // it (`Result<T, E>`), else at the return type (an alias).
    let error_span = error_type(&task.output).map_or(ret_span, Spanned::span);
    // The error's conversion is picked where its concrete type is known:
    // `CeleryException` (its own `exc_type`) before any `IntoTaskError`
    // (autoref specialization, see `task_core::__private::ViaException`).
    let convert = locate(
        quote! {
            |#error| {
                use #krate::__private::{ViaConversion as _, ViaException as _};
                (&#error).__task_error_kind().convert(#error)
            }
        },
        error_span,
    );
    let call = if task.is_async {
        let encode = locate(
            quote!(#krate::__private::encode_output::<#ident, _, _>),
            ret_span,
        );
        let args = delimited(
            Delimiter::Parenthesis,
            quote!(#returned, #convert),
            ret_span,
        );
        let encode = quote!(#encode #args);
        quote! {
            let #returned = #ident.run(#(#locals),*).await;
            #encode
        }
    } else {
        let run_blocking = locate(
            quote!(#krate::__private::run_blocking::<#ident, _, _, _>),
            ret_span,
        );
        let args = delimited(Delimiter::Parenthesis, quote!(#body, #convert), ret_span);
        let await_ = locate(quote!(.await), ret_span);
        let run_blocking = quote!(#run_blocking #args #await_);
        quote! {
            let #body = move || #ident.run(#(#locals),*);
            #run_blocking
        }
    };
    // The future is located at the function's name, where an error such as
    // "future cannot be sent between threads safely" then points.
    let at_name = ident.span();
    let future = delimited(
        Delimiter::Brace,
        quote! {
            #(#takes)*
            #args.finish()?;
            #call
        },
        at_name,
    );
    let async_move = locate(quote!(async move), at_name);
    let future = delimited(Delimiter::Parenthesis, quote!(#async_move #future), at_name);
    let box_pin = locate(quote!(::std::boxed::Box::pin), at_name);
    quote! {
        fn __task_handler(
            #mutability #args: #krate::TaskArgs,
        ) -> #krate::__private::BoxFuture<'static, #krate::registry::TaskOutcome> {
            #box_pin #future
        }
    }
}

/// `E` in a return type written `Result<T, E>` (any path ending in `Result`).
fn error_type(ty: &syn::Type) -> Option<&syn::Type> {
    let syn::Type::Path(path) = ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|arg| match arg {
        syn::GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    match (types.next(), types.next(), types.next()) {
        (Some(_), Some(error), None) => Some(error),
        _ => None,
    }
}

/// `tokens` in the delimiters `delimiter`, which are located at `span`.
fn delimited(delimiter: Delimiter, tokens: TokenStream, span: Span) -> Group {
    let mut group = Group::new(delimiter, tokens);
    group.set_span(Span::call_site().located_at(span));
    group
}

/// `tokens` moved to the location of `span`, each keeping how it resolves
/// names (so mixed-site locals stay hygienic).
fn locate(tokens: TokenStream, span: Span) -> TokenStream {
    map_spans(tokens, &|token_span| token_span.located_at(span))
}

fn map_spans(tokens: TokenStream, map: &dyn Fn(Span) -> Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut mapped = Group::new(group.delimiter(), map_spans(group.stream(), map));
                mapped.set_span(map(group.span()));
                token = TokenTree::Group(mapped);
            } else {
                token.set_span(map(token.span()));
            }
            token
        })
        .collect()
}
