//! Write Sluice operators in Rust.
//!
//! A Sluice operator is a WebAssembly component targeting one of the worlds of
//! `sluice:udf@0.1.0`. This crate hides the generated bindings: implement a
//! trait, call one export macro, and build with
//! `cargo build --release --target wasm32-wasip2`.
//!
//! | shape | trait | export macro |
//! |---|---|---|
//! | map: one record in, one out | [`Map`] | [`export_map!`] |
//! | filter: keep or drop | [`Filter`] | [`export_filter!`] |
//! | flat-map: any number out | [`FlatMap`] | [`export_flat_map!`] |
//! | keyed process: records of one key with that key's state and timers | [`KeyedProcess`] | [`export_keyed_process!`] |
//! | two connected keyed inputs sharing state and timers | [`CoKeyedProcess`] | [`export_co_keyed_process!`] |
//! | incremental window aggregate: create / add / merge / result | [`Aggregate`] | [`export_aggregate!`] |
//! | full-window function: every element of a fired window | [`WindowProcess`] | [`export_window_process!`] |
//! | punctuated watermarks: a watermark after some records | [`Punctuated`] | [`export_punctuated!`] |
//!
//! ```ignore
//! use sluice_guest::{FlatMap, Record, Collector, Error};
//!
//! struct Tokenize;
//!
//! impl FlatMap for Tokenize {
//!     fn open(_config: &str) -> Result<Self, Error> { Ok(Tokenize) }
//!     fn flat_map(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
//!         for word in std::str::from_utf8(record.value)?.split_whitespace() {
//!             out.emit(Some(word.as_bytes()), word.as_bytes(), record.timestamp);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! sluice_guest::export_flat_map!(Tokenize);
//! ```
//!
//! Keyed state ([`ValueState`], [`ListState`], [`MapState`]) lives in the
//! host, scoped to the key of the record (or timer) being processed; see
//! [`state`]. So do timers: a keyed operator registers them through
//! [`timers`] and handles them in `on_timer`.
//!
//! A window operator's windows are assigned, stored and fired by the host: an
//! [`Aggregate`] folds records into an [`Accumulator`] (`u64`, `i64`, `f64`,
//! or any serde type in [`Json`]) the host stores per key and [`Window`]; a
//! [`WindowProcess`] sees all the elements of a window when it fires.
//!
//! Expected failures of one record are returned as [`Error`] values (the
//! host routes them by the job's error policy); a panic is a bug: it traps,
//! and the host discards this instance.

pub mod batch;
pub mod json;
pub mod nexmark;
mod time_window;

pub use time_window::Window;

#[cfg(any(target_arch = "wasm32", doc))]
mod error;
#[cfg(any(target_arch = "wasm32", doc))]
mod export;
#[cfg(any(target_arch = "wasm32", doc))]
pub mod log;
#[cfg(any(target_arch = "wasm32", doc))]
pub mod state;
#[cfg(any(target_arch = "wasm32", doc))]
pub mod timers;
#[cfg(any(target_arch = "wasm32", doc))]
mod watermark;
#[cfg(any(target_arch = "wasm32", doc))]
mod window;

#[cfg(any(target_arch = "wasm32", doc))]
pub use error::Error;
#[cfg(any(target_arch = "wasm32", doc))]
pub use export::{CoKeyedProcess, Collector, Filter, FlatMap, KeyedProcess, Map, Output, Record};
#[cfg(any(target_arch = "wasm32", doc))]
pub use state::{ListState, MapState, StateKey, ValueState};
#[cfg(any(target_arch = "wasm32", doc))]
pub use timers::{TimeDomain, Timer};
#[cfg(any(target_arch = "wasm32", doc))]
pub use watermark::Punctuated;
#[cfg(any(target_arch = "wasm32", doc))]
pub use window::{Accumulator, Aggregate, Json, WindowProcess};

/// Parse the JSON configuration an operator's `open` receives (`{}` when
/// the job gives none); the error starts with `config:` and says what is
/// wrong.
#[cfg(any(target_arch = "wasm32", doc))]
pub fn parse_config<T: serde::de::DeserializeOwned>(config: &str) -> Result<T, Error> {
    serde_json::from_str(config).map_err(|e| Error::new(format!("config: {e}")))
}

/// Host time, as the host sees it.
#[cfg(any(target_arch = "wasm32", doc))]
pub mod time {
    use crate::__private::imports::sluice::udf::context;

    /// The host's processing time in milliseconds since the Unix epoch.
    pub fn processing_time() -> i64 {
        context::processing_time()
    }

    /// The subtask's current event-time watermark, if one has arrived.
    pub fn watermark() -> Option<i64> {
        context::watermark()
    }

    /// How many times the job has restarted after a failure (0 on the
    /// first run).
    pub fn attempt() -> u32 {
        context::attempt()
    }
}

/// Generated bindings and glue used by the export macros. Not public API.
#[cfg(any(target_arch = "wasm32", doc))]
#[doc(hidden)]
pub mod __private {
    pub use crate::export::{CoKeyedExport, FilterExport, FlatMapExport, KeyedExport, MapExport};
    pub use crate::watermark::PunctuatedExport;
    pub use crate::window::{AggregateExport, WindowProcessExport};

    /// The export glue of a world that imports only `log` and `context`.
    macro_rules! world_glue {
        ($(#[$doc:meta])* $module:ident, $world:tt, $macro_name:tt, $bindings:tt) => {
            $(#[$doc])*
            pub mod $module {
                wit_bindgen::generate!({
                    world: $world,
                    path: "../wit/sluice-udf@0.1.0",
                    with: {
                        "sluice:udf/log@0.1.0": crate::__private::imports::sluice::udf::log,
                        "sluice:udf/context@0.1.0": crate::__private::imports::sluice::udf::context,
                    },
                    generate_all,
                    pub_export_macro: true,
                    export_macro_name: $macro_name,
                    default_bindings_module: $bindings,
                });
            }
        };
    }

    /// Imports only: a component imports only what it calls.
    pub mod imports {
        wit_bindgen::generate!({
            world: "imports",
            path: "../wit/sluice-udf@0.1.0",
        });
    }

    world_glue!(
        /// The `stateless` world's export glue. Kept apart from the keyed world's
        /// so that a component links in the type section of the world it exports
        /// and no other.
        stateless,
        "stateless",
        "__export_stateless",
        "sluice_guest::__private::stateless"
    );

    /// The `keyed-process` world's export glue.
    pub mod keyed {
        wit_bindgen::generate!({
            world: "keyed-process",
            path: "../wit/sluice-udf@0.1.0",
            with: {
                "sluice:udf/log@0.1.0": crate::__private::imports::sluice::udf::log,
                "sluice:udf/context@0.1.0": crate::__private::imports::sluice::udf::context,
                "sluice:udf/state@0.1.0": crate::__private::imports::sluice::udf::state,
                "sluice:udf/keyed-context@0.1.0": crate::__private::imports::sluice::udf::keyed_context,
                "sluice:udf/timers@0.1.0": crate::__private::imports::sluice::udf::timers,
            },
            generate_all,
            pub_export_macro: true,
            export_macro_name: "__export_keyed",
            default_bindings_module: "sluice_guest::__private::keyed",
        });
    }

    world_glue!(
        /// The `window-aggregate` world's export glue.
        aggregate,
        "window-aggregate",
        "__export_aggregate",
        "sluice_guest::__private::aggregate"
    );

    world_glue!(
        /// The `window-process` world's export glue.
        window_process,
        "window-process",
        "__export_window_process",
        "sluice_guest::__private::window_process"
    );

    world_glue!(
        /// The `punctuated-watermarks` world's export glue.
        punctuated,
        "punctuated-watermarks",
        "__export_punctuated",
        "sluice_guest::__private::punctuated"
    );
}

/// The body of every `export_*!` macro: wrap `$ty` in its export adapter
/// and hand it to the world's generated export macro. Not public API.
#[cfg(any(target_arch = "wasm32", doc))]
#[doc(hidden)]
#[macro_export]
macro_rules! __sluice_export {
    ($adapter:ident, $world:ident :: $export:ident, $ty:ty) => {
        const _: () = {
            type __SluiceOperator = $crate::__private::$adapter<$ty>;
            $crate::__private::$world::$export!(__SluiceOperator);
        };
    };
}

/// Export a [`Map`] implementation as this component's operator.
#[cfg(any(target_arch = "wasm32", doc))]
#[macro_export]
macro_rules! export_map {
    ($ty:ty) => {
        $crate::__sluice_export!(MapExport, stateless::__export_stateless, $ty);
    };
}

/// Export a [`Filter`] implementation as this component's operator.
#[cfg(any(target_arch = "wasm32", doc))]
#[macro_export]
macro_rules! export_filter {
    ($ty:ty) => {
        $crate::__sluice_export!(FilterExport, stateless::__export_stateless, $ty);
    };
}

/// Export a [`FlatMap`] implementation as this component's operator.
#[cfg(any(target_arch = "wasm32", doc))]
#[macro_export]
macro_rules! export_flat_map {
    ($ty:ty) => {
        $crate::__sluice_export!(FlatMapExport, stateless::__export_stateless, $ty);
    };
}

/// Export a [`KeyedProcess`] implementation as this component's operator.
#[cfg(any(target_arch = "wasm32", doc))]
#[macro_export]
macro_rules! export_keyed_process {
    ($ty:ty) => {
        $crate::__sluice_export!(KeyedExport, keyed::__export_keyed, $ty);
    };
}

/// Export a [`CoKeyedProcess`] implementation as this component's operator
/// (the `keyed-process` world; input 0 goes to `process1`, input 1 to
/// `process2`).
#[cfg(any(target_arch = "wasm32", doc))]
#[macro_export]
macro_rules! export_co_keyed_process {
    ($ty:ty) => {
        $crate::__sluice_export!(CoKeyedExport, keyed::__export_keyed, $ty);
    };
}

/// Export an [`Aggregate`] implementation as this component's operator (the
/// `window-aggregate` world).
#[cfg(any(target_arch = "wasm32", doc))]
#[macro_export]
macro_rules! export_aggregate {
    ($ty:ty) => {
        $crate::__sluice_export!(AggregateExport, aggregate::__export_aggregate, $ty);
    };
}

/// Export a [`WindowProcess`] implementation as this component's operator
/// (the `window-process` world).
#[cfg(any(target_arch = "wasm32", doc))]
#[macro_export]
macro_rules! export_window_process {
    ($ty:ty) => {
        $crate::__sluice_export!(WindowProcessExport, window_process::__export_window_process, $ty);
    };
}

/// Export a [`Punctuated`] implementation as this component's watermark
/// generator (the `punctuated-watermarks` world).
#[cfg(any(target_arch = "wasm32", doc))]
#[macro_export]
macro_rules! export_punctuated {
    ($ty:ty) => {
        $crate::__sluice_export!(PunctuatedExport, punctuated::__export_punctuated, $ty);
    };
}
