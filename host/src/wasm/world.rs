//! Which `sluice:udf` world a component targets, read from what it exports.

use std::fmt;

use wasmtime::Engine;
use wasmtime::component::Component;

/// Exported interface of the `stateless` world.
pub const STATELESS_EXPORT: &str = "sluice:udf/stateless-operator@0.1.0";
/// Exported interface of the `keyed-process` world.
pub const KEYED_EXPORT: &str = "sluice:udf/keyed-operator@0.1.0";
/// Exported interface of the `window-aggregate` world.
pub const AGGREGATE_EXPORT: &str = "sluice:udf/aggregate-operator@0.1.0";
/// Exported interface of the `window-process` world.
pub const WINDOW_PROCESS_EXPORT: &str = "sluice:udf/window-process-operator@0.1.0";
/// Exported interface of the `punctuated-watermarks` world.
pub const PUNCTUATED_EXPORT: &str = "sluice:udf/watermark-generator@0.1.0";

/// An operator world of `sluice:udf@0.1.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum World {
    /// `stateless`: map, filter, flat-map.
    Stateless,
    /// `keyed-process`: keyed state and timers, records grouped by key.
    KeyedProcess,
    /// `window-aggregate`: incremental window aggregate.
    WindowAggregate,
    /// `window-process`: full-window function.
    WindowProcess,
    /// `punctuated-watermarks`: a watermark generator.
    Punctuated,
}

/// Every operator world.
pub const WORLDS: [World; 5] = [
    World::Stateless,
    World::KeyedProcess,
    World::WindowAggregate,
    World::WindowProcess,
    World::Punctuated,
];

impl World {
    /// The world's name in WIT.
    pub fn wit_name(self) -> &'static str {
        match self {
            World::Stateless => "sluice:udf/stateless@0.1.0",
            World::KeyedProcess => "sluice:udf/keyed-process@0.1.0",
            World::WindowAggregate => "sluice:udf/window-aggregate@0.1.0",
            World::WindowProcess => "sluice:udf/window-process@0.1.0",
            World::Punctuated => "sluice:udf/punctuated-watermarks@0.1.0",
        }
    }

    /// The world's short name (`keyed-process`), as the guest tools' `-w`
    /// flags take it.
    pub fn short_name(self) -> &'static str {
        let name = self.wit_name().trim_start_matches("sluice:udf/");
        name.split_once('@').map_or(name, |(n, _)| n)
    }

    /// The operator kinds (as written in a spec) a component of this world
    /// serves.
    pub fn operator_kinds(self) -> &'static [&'static str] {
        match self {
            World::Stateless => &["map", "filter", "flat-map"],
            World::KeyedProcess => &["keyed-process"],
            World::WindowAggregate | World::WindowProcess => &["window"],
            World::Punctuated => &[],
        }
    }

    /// The interface a component of this world exports.
    pub fn export(self) -> &'static str {
        match self {
            World::Stateless => STATELESS_EXPORT,
            World::KeyedProcess => KEYED_EXPORT,
            World::WindowAggregate => AGGREGATE_EXPORT,
            World::WindowProcess => WINDOW_PROCESS_EXPORT,
            World::Punctuated => PUNCTUATED_EXPORT,
        }
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wit_name())
    }
}

/// What a component declares: its world, imports and exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    /// The world it targets, if it exports exactly one operator interface.
    pub world: Option<World>,
    /// Names of everything it imports.
    pub imports: Vec<String>,
    /// Names of everything it exports.
    pub exports: Vec<String>,
}

impl ComponentInfo {
    /// Its exports, for messages: "`a`, `b`" or "nothing".
    pub fn exports_description(&self) -> String {
        match self.exports.as_slice() {
            [] => "nothing".to_owned(),
            e => e.iter().map(|x| format!("`{x}`")).collect::<Vec<_>>().join(", "),
        }
    }

    /// Read a compiled component's type.
    pub fn of(engine: &Engine, component: &Component) -> Self {
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
        let has = |e: &str| exports.iter().any(|x| x == e);
        let mut found = WORLDS.into_iter().filter(|w| has(w.export()));
        let world = match (found.next(), found.next()) {
            (Some(w), None) => Some(w),
            _ => None,
        };
        ComponentInfo { world, imports, exports }
    }
}
