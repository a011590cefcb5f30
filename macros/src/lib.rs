//! Procedural macros for fresco-memoize. Use them through the main crate's re-exports.

use proc_macro::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Fields, parse_macro_input};

mod memoize;

/// Derives `fresco_memoize::Fingerprint`: a schema hash of the type's name, its fields'
/// names and types, its variants and its `#[rkyv(...)]` attributes, mixed with the
/// `SCHEMA` of every field type, so editing a nested type changes this one too.
///
/// A field whose type has no `Fingerprint` takes a string in its place, which stands for
/// that type's definition: change the string when the definition changes, and the values
/// stored before read as misses.
///
/// ```
/// use fresco_memoize::Fingerprint;
///
/// # mod geo { #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)] pub struct Point { pub x: f64, pub y: f64 } }
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint)]
/// struct Route {
///     name: String,
///     #[fingerprint(with = "geo::Point 0.28")]
///     start: geo::Point,
/// }
/// # let _ = Route::SCHEMA;
/// ```
#[proc_macro_derive(Fingerprint, attributes(fingerprint))]
pub fn derive_fingerprint(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    fingerprint_impl(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

fn fingerprint_impl(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let name = &input.ident;
    refuse_fingerprint_attrs(&input.attrs, "the type")?;
    let mut shape = format!("{}:{}", kind(&input.data), name);
    push_rkyv_attrs(&mut shape, &input.attrs);
    let mut field_types = Vec::new();
    let mut push_fields = |shape: &mut String, fields: &Fields| -> syn::Result<()> {
        for (i, f) in fields.iter().enumerate() {
            let ty = &f.ty;
            let fname = f
                .ident
                .as_ref()
                .map_or_else(|| i.to_string(), |id| id.to_string());
            shape.push_str(&format!("|{fname}:{}", quote!(#ty)));
            push_rkyv_attrs(shape, &f.attrs);
            match fingerprint_with(&f.attrs)? {
                // The string replaces the type's own SCHEMA; it goes into the shape, in a
                // form no type's tokens can take, so changing it changes the seed.
                Some(with) => shape.push_str(&format!("=with{with:?}")),
                None => field_types.push(ty.clone()),
            }
        }
        Ok(())
    };
    match &input.data {
        Data::Struct(s) => push_fields(&mut shape, &s.fields)?,
        Data::Enum(e) => {
            for v in &e.variants {
                refuse_fingerprint_attrs(&v.attrs, "a variant")?;
                shape.push_str(&format!("#{}", v.ident));
                push_fields(&mut shape, &v.fields)?;
            }
        }
        Data::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span,
                "Fingerprint cannot be derived for unions",
            ));
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
    Ok(quote! {
        impl #impl_generics ::fresco_memoize::Fingerprint for #name #ty_generics #where_clause {
            const SCHEMA: u64 = ::fresco_memoize::__mix(
                #seed,
                &[#(<#field_types as ::fresco_memoize::Fingerprint>::SCHEMA),*],
            );
        }
    })
}

/// The string of a field's `#[fingerprint(with = "...")]`, if it has one.
fn fingerprint_with(attrs: &[syn::Attribute]) -> syn::Result<Option<String>> {
    let mut with = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("fingerprint")) {
        attr.parse_nested_meta(|meta| {
            if !meta.path.is_ident("with") {
                return Err(meta.error(
                    "unknown fingerprint option: the only one is `with = \"name or version\"`",
                ));
            }
            if with.is_some() {
                return Err(meta.error("`with` is given twice"));
            }
            let value: syn::LitStr = meta.value()?.parse().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    "`with` takes a string naming the field's type and its version, e.g. `with = \"geo::Point 0.28\"`",
                )
            })?;
            if value.value().trim().is_empty() {
                return Err(syn::Error::new(
                    value.span(),
                    "`with` needs a name or version: an empty string would not change when the type does",
                ));
            }
            with = Some(value.value());
            Ok(())
        })?;
    }
    Ok(with)
}

/// `#[fingerprint(...)]` belongs on fields only.
fn refuse_fingerprint_attrs(attrs: &[syn::Attribute], place: &str) -> syn::Result<()> {
    match attrs.iter().find(|a| a.path().is_ident("fingerprint")) {
        Some(attr) => Err(syn::Error::new_spanned(
            attr,
            format!("`#[fingerprint(...)]` goes on a field, not on {place}"),
        )),
        None => Ok(()),
    }
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

/// Memoizes a function: the Rust form of the Python original's `@memoize(...)`.
///
/// Each distinct argument list is computed once; later calls return the stored value.
/// Without options the function is memoized in memory, in a process-wide
/// `Cache::in_memory()`:
///
/// ```
/// use fresco_memoize::memoize;
///
/// #[memoize]
/// fn collatz_steps(n: u64) -> u32 {
///     if n <= 1 { 0 } else if n % 2 == 0 { 1 + collatz_steps(n / 2) } else { 1 + collatz_steps(3 * n + 1) }
/// }
///
/// assert_eq!(collatz_steps(27), 111);
/// assert_eq!(collatz_steps::memoizer().stats().entries, Some(112));
/// ```
///
/// # Options
///
/// | Option | Meaning | Default |
/// |---|---|---|
/// | `cache = CACHE` | The [`Cache`] to use: any expression that lends a `&Cache`, typically a `static CACHE: LazyLock<Cache>`, or a function returning `&'static Cache` | a process-wide in-memory cache |
/// | `name = "..."` | The memoizer's name (its table in the file) | `module::path::function`, `Type::method` for methods |
/// | `store = Lru(1000)` | A [`Store`]; `Memory`, `Lru(n)`, `Persistent`, `Tiered(n)` need no path | the cache's default |
/// | `expires = 10` | Lifetime of a value: seconds (`10`, `0.5`) or any `Duration` expression | never |
/// | `max_hits = 5` | Serve a value at most this many times, then recompute | unlimited |
/// | `keyfunc = \|s: &str\| s.to_lowercase()` | Maps the arguments (each taken by reference) to the stored key | the arguments |
/// | `zone = AUTHORS` | Joins a [`Zone`] (a `&Zone` expression); repeat for several | the `"default"` zone |
/// | `zonekey = \|b: &Book\| b.author_id` | The dependency key of the preceding `zone`, from the arguments; `zonekeys = ...` for several | the zone's own key function (one argument only: with several, a zone that has one needs `zonekey`) |
/// | `version = "2"` | Pins the version folded into stored values' fingerprint (see below) | a hash of the function's code |
///
/// # Keys, methods and results
///
/// - One argument is the key itself (`&Book` is keyed as a `Book`, `&str` as a `str`);
///   several form a tuple. Arguments are serialized where they are, never cloned.
/// - On a method, `&self` is an argument like the others (so part of the key) unless a
///   `keyfunc` leaves it out. Other receivers (`&mut self`, `self`) are refused.
/// - A function returning `Result<T, E>` stores only `Ok` values: an `Err` is returned
///   untouched and the next call computes again.
/// - Key and zone key closures take each argument by reference, in order.
///
/// ```
/// use std::sync::LazyLock;
/// use fresco_memoize::{Cache, Fingerprint, Zone, memoize};
///
/// static CACHE: LazyLock<Cache> = LazyLock::new(|| Cache::in_memory().unwrap());
/// static AUTHORS: LazyLock<Zone> =
///     LazyLock::new(|| CACHE.zone("Authors").unwrap().key(|a: &Author| a.id));
///
/// #[derive(serde::Serialize)]
/// struct Author { id: u64, name: String }
///
/// #[derive(serde::Serialize)]
/// struct Book { id: u64, author_id: u64 }
///
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint)]
/// struct Biography { text: String }
///
/// #[memoize(cache = CACHE, expires = 3600, zone = AUTHORS, zonekey = |b: &Book| b.author_id)]
/// fn biography(book: &Book) -> Biography {
///     Biography { text: format!("author {} wrote book {}", book.author_id, book.id) }
/// }
///
/// impl Author {
///     /// Keyed by `(Author, String)`; filed under the author's id by the zone's key.
///     #[memoize(cache = CACHE, zone = AUTHORS, zonekey = |a: &Author, _lang: &str| a.id)]
///     fn greeting(&self, lang: &str) -> Result<String, String> {
///         match lang {
///             "en" => Ok(format!("Hello, {}", self.name)),
///             other => Err(format!("no {other} greeting")),
///         }
///     }
/// }
///
/// let tolstoy = Author { id: 1, name: "Leo".into() };
/// assert_eq!(biography(&Book { id: 7, author_id: 1 }).text, "author 1 wrote book 7");
/// assert_eq!(tolstoy.greeting("en").as_deref(), Ok("Hello, Leo"));
/// assert!(tolstoy.greeting("xx").is_err()); // not cached
///
/// // Everything derived from author 1, in both memoizers:
/// assert_eq!(AUTHORS.invalidate(&1u64)?, 2);
/// # Ok::<(), fresco_memoize::Error>(())
/// ```
///
/// # The memoizer
///
/// A free function `f` gets a companion `f::memoizer()` returning its
/// `&'static Memoizer<K, V>` (for [`invalidate_key`], [`invalidate_all`], [`stats`]); a
/// method `m` gets `Type::m_memoizer()`. It is built once, on first use. If it cannot be
/// built (say its zone's key function takes another type), the error is reported
/// through the cache's error hook, the function computes every call uncached, and
/// `memoizer()` panics with the error: `try_memoizer()` (`Type::try_m_memoizer()`)
/// returns it instead.
///
/// ```
/// use fresco_memoize::memoize;
///
/// #[memoize(keyfunc = |s: &str| s.to_lowercase())]
/// fn shout(s: &str) -> String { s.to_uppercase() }
///
/// assert_eq!(shout("Hi"), "HI");
/// assert!(shout::memoizer().invalidate_key("hI")?); // the key as the keyfunc maps it
/// # Ok::<(), fresco_memoize::Error>(())
/// ```
///
/// # Async
///
/// An `async fn` or async `&self` method is memoized the same way, on any executor: a
/// hit is answered without awaiting anything, a miss runs the body once per key -
/// concurrent calls of one key, async or not, share one computation, and wait for it
/// without blocking their threads. If the computing call is cancelled (its future
/// dropped) or panics, nothing is stored and a waiting call computes instead.
///
/// ```
/// use fresco_memoize::memoize;
///
/// #[memoize]
/// async fn fetch_title(id: u64) -> Result<String, String> {
///     // an HTTP request, a query...
///     if id == 0 { Err("no such book".into()) } else { Ok(format!("book {id}")) }
/// }
///
/// smol::block_on(async {
///     assert_eq!(fetch_title(7).await.as_deref(), Ok("book 7"));
///     assert!(fetch_title(0).await.is_err()); // not cached
///     assert!(fetch_title::memoizer().invalidate_key_async(&7).await?);
///     Ok::<(), fresco_memoize::Error>(())
/// })?;
/// # Ok::<(), fresco_memoize::Error>(())
/// ```
///
/// # Code changes
///
/// Unless `version` is given, the version is a hash of the function's tokens - argument
/// and return types, body, `keyfunc` and `zonekey` - so editing the function makes the
/// values it stored in a file read as misses on the next run (what `joblib.Memory` does
/// for Python). Layout and comments are not tokens: reformatting keeps the values. Edits
/// to functions it calls are not seen; pin `version` and bump it by hand for those, or
/// to keep values across an edit that does not change results.
///
/// # Limits
///
/// Generic, `const` and `unsafe` functions, `impl Trait` and `&mut` arguments are
/// compile errors. In an `impl` block, a function without `self` must mention `Self`
/// in its signature (or be written as a free function); methods of generic types and
/// trait impls are not supported. A free function's companion is a type of the same
/// name (a function and a type can share one). A `static` cache is never dropped: the
/// writer makes stored values durable once writes pause for 50 ms, but a program that
/// exits right after computing should call `CACHE.flush()` first, or those last values
/// may be lost - never served wrong.
///
/// [`Cache`]: https://docs.rs/fresco-memoize/latest/fresco_memoize/struct.Cache.html
/// [`Store`]: https://docs.rs/fresco-memoize/latest/fresco_memoize/enum.Store.html
/// [`Zone`]: https://docs.rs/fresco-memoize/latest/fresco_memoize/struct.Zone.html
/// [`invalidate_key`]: https://docs.rs/fresco-memoize/latest/fresco_memoize/struct.Memoizer.html#method.invalidate_key
/// [`invalidate_all`]: https://docs.rs/fresco-memoize/latest/fresco_memoize/struct.Memoizer.html#method.invalidate_all
/// [`stats`]: https://docs.rs/fresco-memoize/latest/fresco_memoize/struct.Memoizer.html#method.stats
#[proc_macro_attribute]
pub fn memoize(attr: TokenStream, item: TokenStream) -> TokenStream {
    memoize::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
