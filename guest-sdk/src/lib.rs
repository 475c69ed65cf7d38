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
//! | keyed process: records of one key with that key's state | [`KeyedProcess`] | [`export_keyed_process!`] |
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
//! host, scoped to the key of the record being processed; see [`state`].
//!
//! Expected failures of one record are returned as [`Error`] values (the
//! host routes them by the job's error policy); a panic is a bug: it traps,
//! and the host discards this instance.

pub mod batch;

#[cfg(target_arch = "wasm32")]
mod error;
#[cfg(target_arch = "wasm32")]
mod export;
#[cfg(target_arch = "wasm32")]
pub mod log;
#[cfg(target_arch = "wasm32")]
pub mod state;

#[cfg(target_arch = "wasm32")]
pub use error::Error;
#[cfg(target_arch = "wasm32")]
pub use export::{Collector, Filter, FlatMap, KeyedProcess, Map, Output, Record};
#[cfg(target_arch = "wasm32")]
pub use state::{ListState, MapState, StateKey, ValueState};

/// Host time, as the host sees it.
#[cfg(target_arch = "wasm32")]
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
}

/// Generated bindings and glue used by the export macros. Not public API.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __private {
    pub use crate::export::{FilterExport, FlatMapExport, KeyedExport, MapExport};

    /// Imports only: a component imports only what it calls.
    pub mod imports {
        wit_bindgen::generate!({
            world: "imports",
            path: "../wit/sluice-udf@0.1.0",
        });
    }

    /// The `stateless` world's export glue. Kept apart from the keyed world's
    /// so that a component links in the type section of the world it exports
    /// and no other.
    pub mod stateless {
        wit_bindgen::generate!({
            world: "stateless",
            path: "../wit/sluice-udf@0.1.0",
            with: {
                "sluice:udf/log@0.1.0": crate::__private::imports::sluice::udf::log,
                "sluice:udf/context@0.1.0": crate::__private::imports::sluice::udf::context,
            },
            generate_all,
            pub_export_macro: true,
            export_macro_name: "__export_stateless",
            default_bindings_module: "sluice_guest::__private::stateless",
        });
    }

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
            },
            generate_all,
            pub_export_macro: true,
            export_macro_name: "__export_keyed",
            default_bindings_module: "sluice_guest::__private::keyed",
        });
    }
}

/// Export a [`Map`] implementation as this component's operator.
#[cfg(target_arch = "wasm32")]
#[macro_export]
macro_rules! export_map {
    ($ty:ty) => {
        const _: () = {
            type __SluiceOperator = $crate::__private::MapExport<$ty>;
            $crate::__private::stateless::__export_stateless!(__SluiceOperator);
        };
    };
}

/// Export a [`Filter`] implementation as this component's operator.
#[cfg(target_arch = "wasm32")]
#[macro_export]
macro_rules! export_filter {
    ($ty:ty) => {
        const _: () = {
            type __SluiceOperator = $crate::__private::FilterExport<$ty>;
            $crate::__private::stateless::__export_stateless!(__SluiceOperator);
        };
    };
}

/// Export a [`FlatMap`] implementation as this component's operator.
#[cfg(target_arch = "wasm32")]
#[macro_export]
macro_rules! export_flat_map {
    ($ty:ty) => {
        const _: () = {
            type __SluiceOperator = $crate::__private::FlatMapExport<$ty>;
            $crate::__private::stateless::__export_stateless!(__SluiceOperator);
        };
    };
}

/// Export a [`KeyedProcess`] implementation as this component's operator.
#[cfg(target_arch = "wasm32")]
#[macro_export]
macro_rules! export_keyed_process {
    ($ty:ty) => {
        const _: () = {
            type __SluiceOperator = $crate::__private::KeyedExport<$ty>;
            $crate::__private::keyed::__export_keyed!(__SluiceOperator);
        };
    };
}
