//! The one `bindgen!` of the host, over the `host` world of
//! `sluice:udf@0.1.0`: every interface the host provides, and both operator
//! interfaces it can call. A guest exports only one of them; `instance.rs`
//! loads the one its world has.

wasmtime::component::bindgen!({
    world: "host",
    path: "../wit/sluice-udf@0.1.0",
});

pub use self::exports::sluice::udf::stateless_operator;
pub use self::exports::sluice::udf::{aggregate_operator, keyed_operator, watermark_generator, window_process_operator};
pub use self::sluice::udf::{context, keyed_context, log, state, timers, types};
