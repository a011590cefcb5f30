//! `#[memoize]` expansion.

use proc_macro2::TokenStream;

pub(crate) fn expand(_attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    Err(syn::Error::new_spanned(
        item,
        "#[memoize] is not implemented yet",
    ))
}
