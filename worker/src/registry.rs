//! The registry of actor kinds compiled into the binary.

use std::collections::BTreeMap;

use crate::actor::{Actor, ActorError};
use serde_json::Value;

/// An actor behind a vtable, as the worker loop drives it.
pub(crate) trait DynActor {
    fn handle(&mut self, method: &str, args: Value) -> Result<Value, ActorError>;
    fn save(&self) -> Result<Vec<u8>, String>;
}

impl<A: Actor> DynActor for A {
    fn handle(&mut self, method: &str, args: Value) -> Result<Value, ActorError> {
        Actor::handle(self, method, args)
    }
    fn save(&self) -> Result<Vec<u8>, String> {
        Actor::save(self)
    }
}

type Loader = fn(&[u8]) -> Result<Box<dyn DynActor>, String>;

/// One registered kind: how to make, restore and describe its actors.
#[derive(Clone, Copy)]
pub struct Kind {
    methods: fn() -> &'static [&'static str],
    new: fn() -> Box<dyn DynActor>,
    load: Loader,
}

impl Kind {
    /// The methods this kind answers.
    pub fn methods(&self) -> &'static [&'static str] {
        (self.methods)()
    }
    /// True when `method` is one of this kind's methods.
    pub fn has_method(&self, method: &str) -> bool {
        self.methods().contains(&method)
    }
    pub(crate) fn fresh(&self) -> Box<dyn DynActor> {
        (self.new)()
    }
    pub(crate) fn restore(&self, bytes: &[u8]) -> Result<Box<dyn DynActor>, String> {
        (self.load)(bytes)
    }
}

fn new_boxed<A: Actor>() -> Box<dyn DynActor> {
    Box::new(A::new())
}

fn load_boxed<A: Actor>(bytes: &[u8]) -> Result<Box<dyn DynActor>, String> {
    A::load(bytes).map(|a| Box::new(a) as Box<dyn DynActor>)
}

/// The actor kinds a binary knows, by the `kind` name the config uses.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<String, Kind>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// A registry with the built-in kinds `counter` and `kv`.
    pub fn with_builtins() -> Self {
        Registry::new()
            .register::<crate::builtin::Counter>("counter")
            .register::<crate::builtin::Kv>("kv")
    }

    /// Adds (or replaces) a kind.
    pub fn register<A: Actor>(mut self, kind: &str) -> Self {
        self.kinds.insert(
            kind.to_string(),
            Kind {
                methods: A::methods,
                new: new_boxed::<A>,
                load: load_boxed::<A>,
            },
        );
        self
    }

    /// The kind registered under `name`.
    pub fn get(&self, name: &str) -> Option<Kind> {
        self.kinds.get(name).copied()
    }

    /// The registered kind names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.kinds.keys().map(String::as_str).collect()
    }
}
