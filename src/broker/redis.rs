//! stub
pub struct RedisBroker;
