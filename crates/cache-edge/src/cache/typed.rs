//! A typed handle on one namespace: resolved once, read and written as one value type.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use cache_core::{CacheKey, Codec, NamespaceConfig, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::EdgeCache;
use crate::SetOptions;

// For the links in the docs.
#[cfg(doc)]
use cache_core::ErrorKind;

/// One namespace of a node, holding values of type `T`: made by [`EdgeCache::typed`].
///
/// The namespace is looked up once, when the handle is made, instead of by name on every call,
/// and the compiler checks that every call reads and writes a `T` (the string-named methods
/// let two call sites disagree on a namespace's type, which shows only at run time as a
/// decode failure). Parameters are taken by reference, as `serde::Serialize`: a struct of
/// borrowed fields costs no allocation.
///
/// A handle is a cheap clone of the node (`Arc`) plus an index; cloning it, keeping it in a
/// struct or sending it to another task is fine. It works exactly as the node's own methods
/// with the namespace's name: the same keys, counters, errors and freshness.
///
/// ```
/// # async fn demo() -> cache_edge::Result<()> {
/// use cache_edge::EdgeCache;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Availability { gpu_id: String, available: bool }
///
/// #[derive(Serialize)]
/// struct Gpu<'a> { gpu_id: &'a str }
///
/// let node = EdgeCache::builder().build().await?;
/// let availability = node.typed::<Availability>("gpu_availability")?;
/// availability
///     .set(&Gpu { gpu_id: "g-42" }, &Availability { gpu_id: "g-42".into(), available: true })
///     .await?;
/// let now = availability.get(&Gpu { gpu_id: "g-42" }).await?;
/// assert!(now.is_some_and(|a| a.available));
/// # node.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct TypedNamespace<T, C: Codec = cache_core::JsonCodec> {
    cache: EdgeCache<C>,
    index: usize,
    value: PhantomData<fn() -> T>,
}

impl<C: Codec> EdgeCache<C> {
    /// A handle on `namespace` for values of type `T` (see [`TypedNamespace`]).
    ///
    /// # Errors
    /// [`ErrorKind::UnknownNamespace`] if no namespace of that name is configured.
    pub fn typed<T>(&self, namespace: &str) -> Result<TypedNamespace<T, C>> {
        let (index, _) = self.inner.ns_by_name(namespace)?;
        Ok(TypedNamespace {
            cache: self.clone(),
            index,
            value: PhantomData,
        })
    }
}

impl<T, C: Codec> TypedNamespace<T, C> {
    /// The namespace's configuration (its name among it).
    pub fn config(&self) -> &NamespaceConfig {
        &self.cache.inner.ns_at(self.index).config
    }

    /// The node the handle reads and writes through.
    pub fn cache(&self) -> &EdgeCache<C> {
        &self.cache
    }

    /// The key of `params` in this namespace, for the node's `*_key` methods.
    ///
    /// # Errors
    /// [`ErrorKind::Encode`] when `params` cannot be serialised, [`ErrorKind::LimitExceeded`]
    /// when they are over the node's bound.
    pub fn key<P: Serialize + ?Sized>(&self, params: &P) -> Result<CacheKey> {
        let inner = &self.cache.inner;
        let digest = cache_core::Digest::of_params_within(params, inner.limits.max_params_bytes())?;
        Ok(CacheKey::from_digest(
            &inner.ns_at(self.index).key_ns,
            digest,
        ))
    }
}

impl<T, C> TypedNamespace<T, C>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// [`EdgeCache::get`] in this namespace.
    ///
    /// # Errors
    /// As [`EdgeCache::get`].
    pub async fn get<P: Serialize + ?Sized>(&self, params: &P) -> Result<Option<Arc<T>>> {
        self.cache.get_in(self.index, params).await
    }

    /// [`EdgeCache::get_or_load`] in this namespace.
    ///
    /// # Errors
    /// As [`EdgeCache::get_or_load`].
    pub async fn get_or_load<P, F, Fut, E>(
        &self,
        params: &P,
        options: SetOptions,
        loader: F,
    ) -> Result<Arc<T>>
    where
        P: Serialize + ?Sized,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.cache
            .get_or_load_in(self.index, params, options, loader)
            .await
    }

    /// [`EdgeCache::get_or_load_owned`] in this namespace: soft timeouts and eager refresh.
    ///
    /// # Errors
    /// As [`EdgeCache::get_or_load_owned`].
    pub async fn get_or_load_owned<P, F, Fut, E>(
        &self,
        params: &P,
        options: SetOptions,
        loader: F,
    ) -> Result<Arc<T>>
    where
        P: Serialize + ?Sized,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let key = self.key(params)?;
        self.cache
            .get_or_load_owned_key(&key, options, loader)
            .await
    }

    /// [`EdgeCache::set`] in this namespace: its TTL, no tags.
    ///
    /// # Errors
    /// As [`EdgeCache::set_key`].
    pub async fn set<P: Serialize + ?Sized>(&self, params: &P, value: &T) -> Result<()> {
        self.set_with(params, value, SetOptions::new()).await
    }

    /// [`EdgeCache::set_with`] in this namespace: per-call TTL and resource tags.
    ///
    /// # Errors
    /// As [`EdgeCache::set_key`].
    pub async fn set_with<P: Serialize + ?Sized>(
        &self,
        params: &P,
        value: &T,
        options: SetOptions,
    ) -> Result<()> {
        let key = self.key(params)?;
        self.cache.set_key(&key, value, options).await
    }

    /// [`EdgeCache::invalidate_key`] of `params`' key: removed from L2 and from every node's
    /// L1.
    ///
    /// # Errors
    /// As [`EdgeCache::invalidate_key`].
    pub async fn invalidate<P: Serialize + ?Sized>(&self, params: &P) -> Result<()> {
        let key = self.key(params)?;
        self.cache.invalidate_key(&key).await
    }
}

impl<T, C: Codec> Clone for TypedNamespace<T, C> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            index: self.index,
            value: PhantomData,
        }
    }
}

impl<T, C: Codec> fmt::Debug for TypedNamespace<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedNamespace")
            .field("namespace", &self.config().name)
            .field("value", &std::any::type_name::<T>())
            .finish()
    }
}
