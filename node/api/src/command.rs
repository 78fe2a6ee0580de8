//! What a command is ([`Command`]), how it is described ([`CommandInfo`]) and how a server
//! dispatches to its handlers ([`Router`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{ErrorCode, InvokeFailure, Role};

/// One command: its name on the wire, the role it needs, what it does, its params and its answer.
/// Implemented by an uninhabited marker type per command (see the catalogue modules).
pub trait Command: 'static {
    /// The name on the wire, e.g. `gpu.list`.
    const NAME: &'static str;
    /// The role a caller needs.
    const ROLE: Role;
    /// What it does, for people and agents.
    const DESCRIPTION: &'static str;
    /// Its params; parsed strictly (unknown fields refused).
    type Params: DeserializeOwned + Serialize + JsonSchema + Send + 'static;
    /// Its answer.
    type Answer: Answer;

    /// Parses params strictly; `null` counts as `{}`.
    fn parse(params: Value) -> Result<Self::Params, InvokeFailure> {
        let params = if params.is_null() { json!({}) } else { params };
        serde_json::from_value(params).map_err(|e| {
            InvokeFailure::new(ErrorCode::InvalidParams, format!("{}: {e}", Self::NAME))
        })
    }

    /// Decodes an answer this command gave.
    fn decode(answer: Value) -> Result<Self::Answer, InvokeFailure> {
        serde_json::from_value(answer).map_err(|e| {
            InvokeFailure::new(
                ErrorCode::Internal,
                format!("{}: the answer does not decode: {e}", Self::NAME),
            )
        })
    }
}

/// A command's answer, and how it goes on the wire: a typed answer is encoded, an answer that is
/// JSON already goes as it is (no second copy of it on every call).
pub trait Answer: DeserializeOwned + Serialize + JsonSchema + Send + 'static {
    /// The answer as JSON.
    fn into_json(self) -> Result<Value, InvokeFailure> {
        encode(&self)
    }
}

impl Answer for Value {
    fn into_json(self) -> Result<Value, InvokeFailure> {
        Ok(self)
    }
}

/// Params of commands that take none: `null` or `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

fn schema<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null)
}

/// A command as `node.capabilities` and `fleet.capabilities` list it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandDescription {
    /// The name on the wire.
    pub name: String,
    /// What it does.
    pub description: String,
    /// The role a caller needs.
    pub role: Role,
    /// The JSON schema of its params.
    pub params: Value,
}

/// A command as the catalogue lists it.
#[derive(Debug, Clone, Copy)]
pub struct CommandInfo {
    /// The name on the wire.
    pub name: &'static str,
    /// The role a caller needs.
    pub role: Role,
    /// What it does.
    pub description: &'static str,
    params: fn() -> Value,
    answer: fn() -> Value,
}

impl CommandInfo {
    /// The entry of command `C`.
    pub const fn of<C: Command>() -> Self {
        Self {
            name: C::NAME,
            role: C::ROLE,
            description: C::DESCRIPTION,
            params: schema::<C::Params>,
            answer: schema::<C::Answer>,
        }
    }

    /// The JSON schema of its params.
    pub fn params_schema(&self) -> Value {
        (self.params)()
    }

    /// The JSON schema of its answer.
    pub fn answer_schema(&self) -> Value {
        (self.answer)()
    }

    /// How `node.capabilities` and `fleet.capabilities` describe it.
    pub fn description(&self) -> CommandDescription {
        CommandDescription {
            name: self.name.to_owned(),
            description: self.description.to_owned(),
            role: self.role,
            params: self.params_schema(),
        }
    }
}

/// The future a routed handler returns: the answer as JSON, or the command's failure.
pub type RoutedFuture = Pin<Box<dyn Future<Output = Result<Value, InvokeFailure>> + Send>>;

type Route<S, X> = Box<dyn Fn(S, X, Value) -> RoutedFuture + Send + Sync>;

/// A server's handlers, one per [`Command`]: parses the params of the command named, runs its
/// handler with the server `S` and the call's context `X`, and encodes the answer.
pub struct Router<S, X> {
    routes: BTreeMap<&'static str, Route<S, X>>,
}

impl<S, X> std::fmt::Debug for Router<S, X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("commands", &self.routes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<S: Send + 'static, X: Send + 'static> Default for Router<S, X> {
    fn default() -> Self {
        Self {
            routes: BTreeMap::new(),
        }
    }
}

impl<S: Send + 'static, X: Send + 'static> Router<S, X> {
    /// No routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes command `C` to `handler`.
    ///
    /// # Panics
    ///
    /// When `C` is routed twice: a programming error caught by the first test that builds it.
    #[must_use]
    pub fn route<C, F, Fut>(mut self, handler: F) -> Self
    where
        C: Command,
        F: Fn(S, X, C::Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Answer, InvokeFailure>> + Send + 'static,
    {
        let route: Route<S, X> = Box::new(move |server, context, params| match C::parse(params) {
            Ok(params) => {
                let answer = handler(server, context, params);
                Box::pin(async move { answer.await?.into_json() })
            }
            Err(failure) => Box::pin(std::future::ready(Err(failure))),
        });
        let previous = self.routes.insert(C::NAME, route);
        assert!(previous.is_none(), "{} is routed twice", C::NAME);
        self
    }

    /// Runs `command` with `params`; `UNKNOWN_COMMAND` when nothing routes it.
    pub fn dispatch(&self, server: S, context: X, command: &str, params: Value) -> RoutedFuture {
        match self.routes.get(command) {
            Some(route) => route(server, context, params),
            None => Box::pin(std::future::ready(Err(InvokeFailure::new(
                ErrorCode::UnknownCommand,
                format!("no command {command:?}; the capabilities command lists them"),
            )))),
        }
    }

    /// The names routed.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.routes.keys().copied()
    }
}

/// Encodes an answer.
fn encode(answer: &impl Serialize) -> Result<Value, InvokeFailure> {
    serde_json::to_value(answer).map_err(|e| {
        InvokeFailure::new(
            ErrorCode::Internal,
            format!("the answer does not encode: {e}"),
        )
    })
}

/// Declares commands: for each, an uninhabited marker type implementing [`Command`].
macro_rules! commands {
    ($(
        $(#[doc = $doc:literal])*
        $marker:ident = $name:literal, $role:ident, $params:ty => $answer:ty,
            $description:literal;
    )*) => {
        $(
            $(#[doc = $doc])*
            #[derive(Debug)]
            pub enum $marker {}

            impl $crate::Command for $marker {
                const NAME: &'static str = $name;
                const ROLE: $crate::Role = $crate::Role::$role;
                const DESCRIPTION: &'static str = $description;
                type Params = $params;
                type Answer = $answer;
            }
        )*
    };
}
pub(crate) use commands;

#[cfg(test)]
#[allow(unreachable_pub)]
mod tests {
    use super::*;

    commands! {
        /// A test command.
        Echo = "test.echo", Read, EchoParams => EchoParams, "Answers its params";
    }

    #[derive(Debug, Deserialize, Serialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct EchoParams {
        said: String,
    }

    impl Answer for EchoParams {}

    fn block_on<T>(future: impl Future<Output = T>) -> T {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let std::task::Poll::Ready(value) = future.as_mut().poll(&mut context) {
                return value;
            }
        }
    }

    #[test]
    fn a_router_parses_strictly_runs_and_encodes() {
        let router: Router<(), ()> =
            Router::new().route::<Echo, _, _>(|(), (), params| async move { Ok(params) });
        let answer = block_on(router.dispatch((), (), "test.echo", json!({"said": "hi"})));
        assert_eq!(answer.unwrap(), json!({"said": "hi"}));
        let refused = block_on(router.dispatch((), (), "test.echo", json!({"said": "hi", "x": 1})));
        assert_eq!(refused.unwrap_err().code, ErrorCode::InvalidParams);
        let unknown = block_on(router.dispatch((), (), "test.nothing", Value::Null));
        assert_eq!(unknown.unwrap_err().code, ErrorCode::UnknownCommand);
        assert_eq!(router.names().collect::<Vec<_>>(), ["test.echo"]);
    }

    #[test]
    fn an_info_describes_its_command() {
        let info = CommandInfo::of::<Echo>();
        assert_eq!((info.name, info.role), ("test.echo", Role::Read));
        assert_eq!(info.params_schema()["properties"]["said"]["type"], "string");
        assert_eq!(info.description().params, info.params_schema());
    }
}
