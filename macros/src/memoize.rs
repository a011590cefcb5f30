//! `#[memoize]` expansion.
//!
//! A memoized free function `f` becomes:
//! - `enum f {}` (type namespace only, so it sits beside the function) whose associated
//!   functions `f::memoizer()` / `f::try_memoizer()` build the memoizer once, lazily, in a
//!   `static OnceLock`;
//! - the function itself, whose body is moved into a closure that receives the arguments
//!   by value and runs only on a miss.
//!
//! A method `m` (it has a receiver, or mentions `Self`) gets sibling associated functions
//! `m_memoizer()` / `try_m_memoizer()` instead; its slot is type-erased because a `static`
//! inside a method cannot name `Self`.
//!
//! An `async fn` keeps its signature; its body becomes an async block that
//! `macro_support::call_async` awaits only on a miss (the same steps as the sync call,
//! through `Memoizer::run_async`).
//!
//! Key type: one argument (counting `&self`) is the key itself, with one reference
//! stripped (`&Book` -> `Book`, `&str` -> `str`); several form a tuple of owned types
//! (`(&Book, &str)` -> `(Book, String)`). Calls serialize the borrowed arguments in
//! place, which encodes the same bytes as the owned key.

use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Error, Expr, FnArg, GenericArgument, GenericParam, ItemFn, Lit, MetaNameValue, Pat,
    PathArguments, ReturnType, Token, Type, TypeReference,
};

type Result<T> = syn::Result<T>;

/// How a zone's dependency keys are derived.
enum ZoneKey {
    /// `zonekey = |..| dep`: one dependency key.
    One(Expr),
    /// `zonekeys = |..| [dep, ..]`: several.
    Many(Expr),
}

struct ZoneOpt {
    zone: Expr,
    key: Option<ZoneKey>,
}

#[derive(Default)]
struct Options {
    cache: Option<Expr>,
    name: Option<syn::LitStr>,
    expires: Option<Expr>,
    max_hits: Option<Expr>,
    store: Option<Expr>,
    keyfunc: Option<Expr>,
    version: Option<syn::LitStr>,
    zones: Vec<ZoneOpt>,
}

const KNOWN: &str =
    "cache, name, expires, max_hits, store, keyfunc, version, zone, zonekey, zonekeys";

fn parse_options(attr: TokenStream) -> Result<Options> {
    let pairs = Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(attr)?;
    let mut o = Options::default();
    for pair in pairs {
        let Some(ident) = pair.path.get_ident() else {
            return Err(Error::new_spanned(
                &pair.path,
                format!("expected one of: {KNOWN}"),
            ));
        };
        let key = ident.to_string();
        let value = pair.value;
        let dup = |present: bool| -> Result<()> {
            if present {
                Err(Error::new(ident.span(), format!("`{key}` is given twice")))
            } else {
                Ok(())
            }
        };
        match key.as_str() {
            "cache" => {
                dup(o.cache.is_some())?;
                o.cache = Some(value);
            }
            "name" => {
                dup(o.name.is_some())?;
                o.name = Some(string_literal(&value, "name")?);
            }
            "version" => {
                dup(o.version.is_some())?;
                o.version = Some(string_literal(&value, "version")?);
            }
            "expires" => {
                dup(o.expires.is_some())?;
                o.expires = Some(value);
            }
            "max_hits" => {
                dup(o.max_hits.is_some())?;
                o.max_hits = Some(value);
            }
            "store" => {
                dup(o.store.is_some())?;
                o.store = Some(value);
            }
            "keyfunc" => {
                dup(o.keyfunc.is_some())?;
                o.keyfunc = Some(value);
            }
            "zone" => o.zones.push(ZoneOpt {
                zone: value,
                key: None,
            }),
            "zonekey" | "zonekeys" => {
                let Some(last) = o.zones.last_mut() else {
                    return Err(Error::new(
                        ident.span(),
                        format!("`{key}` must follow the `zone = ...` it belongs to"),
                    ));
                };
                if last.key.is_some() {
                    return Err(Error::new(
                        ident.span(),
                        "this zone already has a key function; give each zone one `zonekey`",
                    ));
                }
                last.key = Some(if key == "zonekey" {
                    ZoneKey::One(value)
                } else {
                    ZoneKey::Many(value)
                });
            }
            _ => {
                return Err(Error::new(
                    ident.span(),
                    format!("unknown #[memoize] option `{key}`; expected one of: {KNOWN}"),
                ));
            }
        }
    }
    Ok(o)
}

fn string_literal(value: &Expr, what: &str) -> Result<syn::LitStr> {
    match value {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.clone()),
        other => Err(Error::new_spanned(
            other,
            format!("`{what}` must be a string literal"),
        )),
    }
}

/// One argument of the memoized function.
struct Arg {
    /// Its pattern as written (`self` for the receiver).
    pat: Option<Box<Pat>>,
    /// Its declared type (`&Self` for `&self`).
    ty: Type,
    /// The type it is borrowed as in key functions (`Book` for both `Book` and `&Book`).
    deref: Type,
    /// Whether the argument is itself a reference.
    by_ref: bool,
    span: Span,
}

fn check_signature(f: &ItemFn) -> Result<()> {
    let sig = &f.sig;
    if let Some(t) = &sig.constness {
        return Err(Error::new(t.span, "#[memoize] cannot memoize a const fn"));
    }
    if let Some(t) = &sig.unsafety {
        return Err(Error::new(t.span, "#[memoize] cannot memoize an unsafe fn"));
    }
    if let Some(abi) = &sig.abi {
        return Err(Error::new_spanned(
            abi,
            "#[memoize] cannot memoize an extern fn",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(Error::new_spanned(
            v,
            "#[memoize] cannot memoize a variadic fn",
        ));
    }
    for param in &sig.generics.params {
        if !matches!(param, GenericParam::Lifetime(_)) {
            return Err(Error::new_spanned(
                param,
                "#[memoize] cannot memoize a generic fn: its memoizer is one static; \
                 write one memoized fn per concrete type",
            ));
        }
    }
    if let Some(w) = &sig.generics.where_clause {
        for pred in &w.predicates {
            if !matches!(pred, syn::WherePredicate::Lifetime(_)) {
                return Err(Error::new_spanned(
                    pred,
                    "#[memoize] cannot memoize a generic fn",
                ));
            }
        }
    }
    Ok(())
}

fn reject_mut_and_impl(ty: &Type) -> Result<()> {
    match ty {
        Type::Reference(r) if r.mutability.is_some() => Err(Error::new_spanned(
            ty,
            "#[memoize] cannot take `&mut` arguments: a memoized call must not change \
             its arguments",
        )),
        Type::ImplTrait(_) => Err(Error::new_spanned(
            ty,
            "#[memoize] cannot take `impl Trait` arguments: name a concrete type",
        )),
        _ => Ok(()),
    }
}

fn collect_args(f: &ItemFn) -> Result<Vec<Arg>> {
    let mut args = Vec::new();
    for input in &f.sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                let ok = r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none();
                if !ok {
                    return Err(Error::new_spanned(
                        r,
                        "#[memoize] methods must take `&self`",
                    ));
                }
                args.push(Arg {
                    pat: None,
                    ty: syn::parse_quote_spanned!(r.span()=> &Self),
                    deref: syn::parse_quote_spanned!(r.span()=> Self),
                    by_ref: true,
                    span: r.span(),
                });
            }
            FnArg::Typed(t) => {
                reject_mut_and_impl(&t.ty)?;
                let (deref, by_ref) = match &*t.ty {
                    Type::Reference(TypeReference { elem, .. }) => {
                        reject_mut_and_impl(elem)?;
                        ((**elem).clone(), true)
                    }
                    other => (other.clone(), false),
                };
                args.push(Arg {
                    pat: Some(t.pat.clone()),
                    ty: (*t.ty).clone(),
                    deref,
                    by_ref,
                    span: t.ty.span(),
                });
            }
        }
    }
    Ok(args)
}

/// The value type and whether the function returns `Result`.
fn value_type(f: &ItemFn) -> Result<(Type, bool)> {
    let ReturnType::Type(_, ty) = &f.sig.output else {
        return Err(Error::new(
            f.sig.ident.span(),
            "#[memoize] needs a return type: a function that returns nothing has nothing \
             to memoize",
        ));
    };
    if let Type::ImplTrait(_) = &**ty {
        return Err(Error::new_spanned(
            ty,
            "#[memoize] cannot memoize a function returning `impl Trait`: name the type",
        ));
    }
    if let Type::Path(p) = &**ty
        && p.qself.is_none()
        && let Some(last) = p.path.segments.last()
        && last.ident == "Result"
        && let PathArguments::AngleBracketed(a) = &last.arguments
        && let Some(GenericArgument::Type(ok)) = a.args.first()
    {
        return Ok((ok.clone(), true));
    }
    Ok(((**ty).clone(), false))
}

/// Whether `tokens` mention `Self`.
fn mentions_self(tokens: TokenStream) -> bool {
    tokens.into_iter().any(|tt| match tt {
        TokenTree::Ident(i) => i == "Self",
        TokenTree::Group(g) => mentions_self(g.stream()),
        _ => false,
    })
}

/// Writes `tokens` in a form that depends only on the tokens themselves (not on spacing,
/// comments or the compiler's pretty-printer), for the code-change hash.
pub(crate) fn stable_text(tokens: TokenStream, out: &mut String) {
    for tt in tokens {
        match tt {
            TokenTree::Group(g) => {
                let (open, close) = match g.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::None => ("", ""),
                };
                out.push_str(open);
                stable_text(g.stream(), out);
                out.push_str(close);
                out.push(' ');
            }
            TokenTree::Ident(i) => {
                out.push_str(&i.to_string());
                out.push(' ');
            }
            TokenTree::Punct(p) => {
                out.push(p.as_char());
                if p.spacing() == proc_macro2::Spacing::Alone {
                    out.push(' ');
                }
            }
            TokenTree::Literal(l) => {
                out.push_str(&l.to_string());
                out.push(' ');
            }
        }
    }
}

/// The version folded into the memoizer's fingerprint: the pinned `version`, or a hash
/// of the code that decides what is stored (argument and return types, body, key and
/// zone key functions).
fn code_version(f: &ItemFn, o: &Options) -> String {
    if let Some(v) = &o.version {
        return v.value();
    }
    let mut text = String::new();
    stable_text(f.sig.inputs.to_token_stream(), &mut text);
    text.push('|');
    stable_text(f.sig.output.to_token_stream(), &mut text);
    text.push('|');
    stable_text(f.block.to_token_stream(), &mut text);
    if let Some(k) = &o.keyfunc {
        text.push_str("|keyfunc:");
        stable_text(k.to_token_stream(), &mut text);
    }
    for z in &o.zones {
        if let Some(ZoneKey::One(e) | ZoneKey::Many(e)) = &z.key {
            text.push_str("|zonekey:");
            stable_text(e.to_token_stream(), &mut text);
        }
    }
    format!("code:{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// The expression lending argument `i` of the args tuple `__a` as `&Deref`.
fn lend(args: &[Arg], i: usize) -> TokenStream {
    let idx = syn::Index::from(i);
    if args[i].by_ref {
        quote!(__a.#idx)
    } else {
        quote!(&__a.#idx)
    }
}

/// `(f)(&k.0, &k.1, ..)` borrowed from an owned key tuple `__k` of type `K`.
fn call_on_owned(f: &Expr, args: &[Arg]) -> TokenStream {
    let parts = args.iter().enumerate().map(|(i, a)| {
        let idx = syn::Index::from(i);
        let deref = &a.deref;
        quote!(::core::borrow::Borrow::<#deref>::borrow(&__k.#idx))
    });
    quote!({
        let __f = #f;
        __f(#(#parts),*)
    })
}

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> Result<TokenStream> {
    let o = parse_options(attr)?;
    let f: ItemFn = syn::parse2(item)?;
    check_signature(&f)?;
    let args = collect_args(&f)?;
    let (value, fallible) = value_type(&f)?;
    let is_method = f.sig.receiver().is_some() || mentions_self(f.sig.to_token_stream());
    let version = code_version(&f, &o);

    let fp = fresco_memoize_path();
    let ident = &f.sig.ident;
    let vis = &f.vis;
    let single = args.len() == 1;

    // The memoizer's key type.
    let key_ty: TokenStream = match args.len() {
        0 => quote!(()),
        1 => args[0].deref.to_token_stream(),
        _ => {
            let parts = args.iter().map(|a| {
                let deref = &a.deref;
                quote_spanned!(a.span=> <#deref as #fp::macro_support::KeyPart>::Owned)
            });
            quote!((#(#parts,)*))
        }
    };
    let memo_ty = quote!(#fp::Memoizer<#key_ty, #value>);

    // Building it.
    let cache = match &o.cache {
        Some(expr) => quote_spanned!(expr.span()=>
            ::core::result::Result::Ok(#fp::Cache::clone(&(#expr)))
        ),
        None => quote!(#fp::macro_support::default_cache()),
    };
    let name = match (&o.name, is_method) {
        (Some(n), _) => quote!(::std::string::String::from(#n)),
        (None, false) => quote!(::std::string::String::from(::core::concat!(
            ::core::module_path!(),
            "::",
            ::core::stringify!(#ident)
        ))),
        (None, true) => quote!(::std::format!(
            "{}::{}",
            ::core::any::type_name::<Self>(),
            ::core::stringify!(#ident)
        )),
    };
    let start = match (&o.keyfunc, single) {
        (None, _) => quote!(__cache.memoizer::<#key_ty, #value>(&__name)),
        (Some(kf), true) => quote_spanned!(kf.span()=>
            #fp::macro_support::builder_keyed::<#key_ty, #value, _>(
                __cache, &__name, ::fresco_memoize::macro_support::key_fn::<#key_ty, _>(#kf))
        ),
        (Some(kf), false) => {
            let call = call_on_owned(kf, &args);
            quote_spanned!(kf.span()=>
                #fp::macro_support::builder_keyed::<#key_ty, #value, _>(
                    __cache, &__name, move |__k: &#key_ty| #call)
            )
        }
    };
    let mut setters = Vec::new();
    if let Some(e) = &o.expires {
        let ttl = match e {
            Expr::Lit(syn::ExprLit {
                lit: Lit::Int(_), ..
            }) => quote_spanned!(e.span()=> ::std::time::Duration::from_secs(#e)),
            Expr::Lit(syn::ExprLit {
                lit: Lit::Float(_), ..
            }) => quote_spanned!(e.span()=> ::std::time::Duration::from_secs_f64(#e)),
            other => quote_spanned!(other.span()=> #other),
        };
        setters.push(quote_spanned!(e.span()=> .expires(#ttl)));
    }
    if let Some(e) = &o.max_hits {
        setters.push(quote_spanned!(e.span()=> .max_hits(#e)));
    }
    if let Some(e) = &o.store {
        let store = store_expr(e, &fp);
        setters.push(quote_spanned!(e.span()=> .store(#store)));
    }
    for z in &o.zones {
        let zone = &z.zone;
        let zref = quote_spanned!(zone.span()=> &(#zone));
        setters.push(match (&z.key, single) {
            (None, true) => quote!(.zone(#zref)),
            // The call path derives rows from the borrowed arguments: a default key
            // function over the owned key tuple could not take part (a build error).
            (None, false) => quote!(.__zone_without_default(#zref)),
            (Some(ZoneKey::One(k)), true) => quote_spanned!(k.span()=>
                .zone_key(#zref, ::fresco_memoize::macro_support::key_fn::<#key_ty, _>(#k))
            ),
            (Some(ZoneKey::Many(k)), true) => quote_spanned!(k.span()=> .zone_keys(#zref, #k)),
            (Some(ZoneKey::One(k)), false) => {
                let call = call_on_owned(k, &args);
                quote_spanned!(k.span()=> .zone_key(#zref, move |__k: &#key_ty| #call))
            }
            (Some(ZoneKey::Many(k)), false) => {
                let call = call_on_owned(k, &args);
                quote_spanned!(k.span()=> .zone_keys(#zref, move |__k: &#key_ty| #call))
            }
        });
    }
    let build = quote! {
        #fp::macro_support::build::<#key_ty, #value>(#cache, |__cache| {
            let __name = #name;
            #start #(#setters)* .version(#version).build()
        })
    };

    // The call path: key and dependency rows from the borrowed arguments. These are the
    // closures' bodies; `__m` is the memoizer (bound by the sync call path's match, a
    // closure argument in the async one).
    let (key_fn, deps_fn) = if single {
        let a0 = lend(&args, 0);
        (quote!(__m.__key_of(#a0)), quote!(__m.__deps_of(#a0)))
    } else {
        let lent: Vec<_> = (0..args.len()).map(|i| lend(&args, i)).collect();
        let key = match &o.keyfunc {
            Some(kf) => quote_spanned!(kf.span()=> {
                let __f = #kf;
                #fp::macro_support::key(&__f(#(#lent),*))
            }),
            None => quote!(#fp::macro_support::key(&(#(#lent,)*))),
        };
        let adds = o.zones.iter().filter_map(|z| {
            let zone = &z.zone;
            let zref = quote_spanned!(zone.span()=> &(#zone));
            match z.key.as_ref()? {
                ZoneKey::One(k) => Some(quote!({
                    let __f = #k;
                    __d.add(#zref, &__f(#(#lent),*));
                })),
                ZoneKey::Many(k) => Some(quote!({
                    let __f = #k;
                    __d.add_all(#zref, __f(#(#lent),*));
                })),
            }
        });
        (
            key,
            quote!({
                #[allow(unused_mut)]
                let mut __d = #fp::macro_support::Deps::new();
                #(#adds)*
                __d
            }),
        )
    };

    // The function itself: arguments renamed, the body moved into the compute closure.
    let mut sig = f.sig.clone();
    let mut passed = Vec::new();
    let mut pats = Vec::new();
    let mut tys = Vec::new();
    for (i, (input, a)) in sig.inputs.iter_mut().zip(&args).enumerate() {
        tys.push(a.ty.clone());
        match input {
            FnArg::Receiver(_) => {
                passed.push(quote!(self));
                pats.push(quote!(_));
            }
            FnArg::Typed(t) => {
                let renamed = format_ident!("__fresco_arg{}", i);
                passed.push(quote!(#renamed));
                let pat = a.pat.as_ref().map(|p| quote!(#p));
                pats.push(pat.unwrap_or_else(|| quote!(_)));
                *t.pat = syn::parse_quote!(#renamed);
            }
        }
    }
    let ret = match &f.sig.output {
        ReturnType::Type(_, ty) => quote!(#ty),
        ReturnType::Default => quote!(()),
    };
    let body = &f.block;
    let call = if fallible {
        quote!(__m.__try_call)
    } else {
        quote!(__m.__call)
    };
    let attrs = &f.attrs;
    let fname = ident.to_string();
    let slot_fn = if is_method {
        format_ident!("try_{}_memoizer", ident)
    } else {
        format_ident!("try_memoizer")
    };
    let get = if is_method {
        quote!(Self::#slot_fn())
    } else {
        quote!(#ident::#slot_fn())
    };
    let function = if f.sig.asyncness.is_some() {
        // The body becomes an async block. The computation is written inline in the
        // helper's call so that its argument types (with the caller's lifetimes) are
        // inferred from the arguments, and the typed binding gives `?` its return type.
        let helper = if fallible {
            quote!(#fp::macro_support::try_call_async)
        } else {
            quote!(#fp::macro_support::call_async)
        };
        quote! {
            #(#attrs)*
            #vis #sig {
                #helper(
                    #get,
                    (#(#passed,)*),
                    |__m, __a| #key_fn,
                    |__m, __a| #deps_fn,
                    move |(#(#pats,)*)| async move {
                        let __fresco_out: #ret = #body;
                        __fresco_out
                    },
                )
                .await
            }
        }
    } else {
        quote! {
            #(#attrs)*
            #vis #sig {
                let __fresco_compute = move |(#(#pats,)*): (#(#tys,)*)| -> #ret #body;
                match #get {
                    ::core::result::Result::Ok(__m) => #call(
                        (#(#passed,)*),
                        |__a| #key_fn,
                        |__a| #deps_fn,
                        __fresco_compute,
                    ),
                    ::core::result::Result::Err(_) => __fresco_compute((#(#passed,)*)),
                }
            }
        }
    };

    let doc_get = format!(
        "The memoizer of [`{fname}`]{}: invalidate its entries, read its stats.\n\n\
         Built once, on first use.\n\n# Panics\n\nIf it could not be built (the error \
         was also reported through the cache); `try` variant: no panic.",
        if is_method { "" } else { "()" }
    );
    let doc_try = format!(
        "The memoizer of `{fname}`, or why it could not be built (then `{fname}` computes \
         every call)."
    );
    let accessors = if is_method {
        let get_fn = format_ident!("{}_memoizer", ident);
        quote! {
            #[doc = #doc_get]
            #[allow(dead_code)]
            #vis fn #get_fn() -> &'static #memo_ty {
                match Self::#slot_fn() {
                    ::core::result::Result::Ok(m) => m,
                    ::core::result::Result::Err(e) => #fp::macro_support::unavailable(#fname, e),
                }
            }

            #[doc = #doc_try]
            #[allow(dead_code)]
            #vis fn #slot_fn() -> ::core::result::Result<&'static #memo_ty, &'static #fp::Error> {
                static SLOT: #fp::macro_support::Slot<
                    ::core::result::Result<
                        ::std::boxed::Box<dyn #fp::macro_support::Any + Send + Sync>,
                        #fp::Error,
                    >,
                > = #fp::macro_support::Slot::new();
                static GENERIC: #fp::macro_support::Slot<#fp::Error> =
                    #fp::macro_support::Slot::new();
                #fp::macro_support::erased::<#key_ty, #value>(
                    SLOT.get_or_init(|| #fp::macro_support::erase(#build)),
                    &GENERIC,
                    || #name,
                )
            }
        }
    } else {
        let doc_ns = format!(
            "Access to the memoizer of [`{fname}()`]: `{fname}::memoizer()`. Generated by \
             `#[memoize]`."
        );
        quote! {
            #[doc = #doc_ns]
            #[allow(non_camel_case_types, dead_code)]
            #vis enum #ident {}

            impl #ident {
                #[doc = #doc_get]
                #[allow(dead_code)]
                #vis fn memoizer() -> &'static #memo_ty {
                    match Self::try_memoizer() {
                        ::core::result::Result::Ok(m) => m,
                        ::core::result::Result::Err(e) => #fp::macro_support::unavailable(#fname, e),
                    }
                }

                #[doc = #doc_try]
                #[allow(dead_code)]
                #vis fn try_memoizer() -> ::core::result::Result<&'static #memo_ty, &'static #fp::Error> {
                    static SLOT: #fp::macro_support::Slot<
                        ::core::result::Result<#memo_ty, #fp::Error>,
                    > = #fp::macro_support::Slot::new();
                    SLOT.get_or_init(|| #build).as_ref()
                }
            }
        }
    };
    Ok(quote! {
        #accessors
        #function
    })
}

/// `store = Lru(100)` is short for `store = fresco_memoize::Store::Lru(100)`.
fn store_expr(e: &Expr, fp: &TokenStream) -> TokenStream {
    let variant = |path: &syn::Path| {
        path.get_ident()
            .filter(|i| ["Memory", "Lru", "Persistent", "Tiered"].contains(&i.to_string().as_str()))
            .cloned()
    };
    match e {
        Expr::Path(p) if p.qself.is_none() => match variant(&p.path) {
            Some(v) => quote_spanned!(e.span()=> #fp::Store::#v),
            None => quote!(#e),
        },
        Expr::Call(c) => match &*c.func {
            Expr::Path(p) if p.qself.is_none() => match variant(&p.path) {
                Some(v) => {
                    let args = &c.args;
                    quote_spanned!(e.span()=> #fp::Store::#v(#args))
                }
                None => quote!(#e),
            },
            _ => quote!(#e),
        },
        _ => quote!(#e),
    }
}

/// The path of the main crate in generated code.
fn fresco_memoize_path() -> TokenStream {
    quote!(::fresco_memoize)
}
