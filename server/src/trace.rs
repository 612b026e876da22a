//! Traces across services: the W3C trace context of the caller's current span rides in the
//! gRPC metadata of every call a service makes, and every call a service serves continues the
//! trace it carries.

/// A request carrying the trace context of the current span.
pub fn request<T>(message: T) -> tonic::Request<T> {
    tonic::Request::new(message)
}
