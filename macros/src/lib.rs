//! Procedural macros for fresco-memoize. Use them through the main crate's re-exports.

use proc_macro::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Fields, parse_macro_input};

mod memoize;

/// Derives `fresco_memoize::Fingerprint`: a schema hash of the type's name, its fields'
/// names and types, its variants and its `#[rkyv(...)]` attributes, mixed with the
/// `SCHEMA` of every field type, so editing a nested type changes this one too.
#[proc_macro_derive(Fingerprint)]
pub fn derive_fingerprint(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    let name = &input.ident;
    let mut shape = format!("{}:{}", kind(&input.data), name);
    push_rkyv_attrs(&mut shape, &input.attrs);
    let mut field_types = Vec::new();
    let mut push_fields = |shape: &mut String, fields: &Fields| {
        for (i, f) in fields.iter().enumerate() {
            let ty = &f.ty;
            let fname = f
                .ident
                .as_ref()
                .map_or_else(|| i.to_string(), |id| id.to_string());
            shape.push_str(&format!("|{fname}:{}", quote!(#ty)));
            push_rkyv_attrs(shape, &f.attrs);
            field_types.push(ty.clone());
        }
    };
    match &input.data {
        Data::Struct(s) => push_fields(&mut shape, &s.fields),
        Data::Enum(e) => {
            for v in &e.variants {
                shape.push_str(&format!("#{}", v.ident));
                push_fields(&mut shape, &v.fields);
            }
        }
        Data::Union(u) => {
            return syn::Error::new(
                u.union_token.span,
                "Fingerprint cannot be derived for unions",
            )
            .to_compile_error()
            .into();
        }
    }
    let seed = xxhash_rust::xxh3::xxh3_64(shape.as_bytes());
    let mut generics = input.generics.clone();
    for param in generics.type_params_mut() {
        param
            .bounds
            .push(syn::parse_quote!(::fresco_memoize::Fingerprint));
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    quote! {
        impl #impl_generics ::fresco_memoize::Fingerprint for #name #ty_generics #where_clause {
            const SCHEMA: u64 = ::fresco_memoize::__mix(
                #seed,
                &[#(<#field_types as ::fresco_memoize::Fingerprint>::SCHEMA),*],
            );
        }
    }
    .into()
}

fn kind(data: &Data) -> &'static str {
    match data {
        Data::Struct(_) => "struct",
        Data::Enum(_) => "enum",
        Data::Union(_) => "union",
    }
}

/// `#[rkyv(...)]` attributes can change the archived layout (`with = ...`), so they are
/// part of the schema.
fn push_rkyv_attrs(shape: &mut String, attrs: &[syn::Attribute]) {
    for attr in attrs.iter().filter(|a| a.path().is_ident("rkyv")) {
        shape.push_str(&format!("@{}", quote!(#attr)));
    }
}

/// Memoizes a function in a fresco-memoize cache. See the main crate's documentation.
#[proc_macro_attribute]
pub fn memoize(attr: TokenStream, item: TokenStream) -> TokenStream {
    memoize::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
