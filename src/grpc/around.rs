//! The one shape of the server's tower layers: each is an [`Around`] — what it does with a
//! call and the service inside it — wrapped by [`layer`]. The span, the metering, the
//! deadline, the message size, authentication and load shedding (wired in `app.rs`) write
//! only that; the `Layer` and `Service` plumbing is here, once.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::codegen::http;

/// The future every layer answers with.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a layer does around one call: `inner` is the service inside it, ready to be called.
pub trait Around<B, R>: Clone {
    fn around<S: Inner<B, R>>(&self, request: http::Request<B>, inner: S) -> Answer<R, S::Error>;
}

/// A layer's answer to one call.
pub type Answer<R, E> = BoxFuture<Result<http::Response<R>, E>>;

/// The service inside a layer, as every [`Around`] needs it.
pub trait Inner<B, R>:
    tower::Service<
        http::Request<B>,
        Response = http::Response<R>,
        Future: Send + 'static,
        Error: Send + 'static,
    > + Send
    + 'static
{
}

impl<T, B, R> Inner<B, R> for T where
    T: tower::Service<
            http::Request<B>,
            Response = http::Response<R>,
            Future: Send + 'static,
            Error: Send + 'static,
        > + Send
        + 'static
{
}

/// The tower layer of an [`Around`].
pub fn layer<P: Clone>(policy: P) -> AroundLayer<P> {
    AroundLayer { policy }
}

/// See [`layer`].
#[derive(Debug, Clone)]
pub struct AroundLayer<P> {
    policy: P,
}

impl<S, P: Clone> tower::Layer<S> for AroundLayer<P> {
    type Service = Wrapped<S, P>;

    fn layer(&self, inner: S) -> Wrapped<S, P> {
        Wrapped {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// A service wrapped by an [`AroundLayer`].
#[derive(Debug, Clone)]
pub struct Wrapped<S, P> {
    inner: S,
    policy: P,
}

impl<S, P, B, R> tower::Service<http::Request<B>> for Wrapped<S, P>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    P: Around<B, R>,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Answer<R, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call; the fresh clone waits for the next.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        self.policy.around(request, inner)
    }
}
