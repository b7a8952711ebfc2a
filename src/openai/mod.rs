//! The wire types of the HTTP API, as serde structs (and utoipa schemas, from
//! which `/openapi.json` is generated). Requests are checked and converted
//! into engine types in `validate`; nothing here touches the engine.

pub mod chat;
pub mod common;
pub mod completions;
pub mod misc;
