//! JWKS sources and cache (in progress).
