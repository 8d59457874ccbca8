//! [`Client`]: the async [`crate::Client`]'s calls for programs without an async runtime (a
//! script, a test). It runs its own single-threaded runtime; do not call it from inside one
//! (tokio refuses to block a runtime's thread): use the async client there.

use bytes::Bytes;

use crate::{ClientBuilder, Error, Read, Resolution, Sibling};

/// A blocking client: [`crate::Client`] on a runtime of its own.
#[derive(Debug)]
pub struct Client {
    runtime: tokio::runtime::Runtime,
    inner: crate::Client,
}

impl Client {
    /// A blocking client as `builder` describes it.
    pub fn new(builder: ClientBuilder) -> Result<Client, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Protocol(format!("cannot start a runtime: {e}")))?;
        // reqwest's client must be made where it runs.
        let inner = runtime.block_on(async { builder.build() })?;
        Ok(Client { runtime, inner })
    }

    /// See [`crate::Client::put`].
    pub fn put(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        content_type: &str,
        context: Option<&str>,
    ) -> Result<Option<String>, Error> {
        self.runtime.block_on(self.inner.put(key, value, content_type, context))
    }

    /// See [`crate::Client::get`].
    pub fn get(&self, key: &str) -> Result<Read, Error> {
        self.runtime.block_on(self.inner.get(key))
    }

    /// See [`crate::Client::delete`].
    pub fn delete(&self, key: &str, context: Option<&str>) -> Result<(), Error> {
        self.runtime.block_on(self.inner.delete(key, context))
    }

    /// See [`crate::Client::resolve`].
    pub fn resolve(&self, key: &str, merge: impl Fn(&[Sibling]) -> Resolution) -> Result<Read, Error> {
        self.runtime.block_on(self.inner.resolve(key, merge))
    }

    /// The async client inside.
    pub fn inner(&self) -> &crate::Client {
        &self.inner
    }
}
