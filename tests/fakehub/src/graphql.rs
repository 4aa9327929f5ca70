//! `POST /graphql`: just enough of GitHub's GraphQL API to show that a request passed through
//! unchanged. It needs an `Authorization` (401 without, as GitHub does) and answers
//! deterministically: `{"data":{"viewer":{"login":…}}}` ([`crate::login_for`] the token) for a
//! query that asks for `viewer`, and a GraphQL error for anything else.

use axum::body::Bytes;
use serde_json::{Value, json};

use crate::server::Plan;
use crate::state::RequestMeta;

/// The plan for one GraphQL request.
pub(crate) fn plan(meta: &RequestMeta, body: &[u8]) -> Plan {
    let Some(authorization) = meta.authorization.as_deref() else {
        return reply(
            401,
            json!({"message": "This endpoint requires you to be authenticated.", "documentation_url": "https://docs.github.com/graphql/guides/forming-calls-with-graphql#authenticating-with-graphql"}),
        );
    };
    let query = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("query").and_then(Value::as_str).map(str::to_owned));
    let Some(query) = query else {
        return reply(
            400,
            json!({"message": "Problems parsing JSON", "documentation_url": "https://docs.github.com/graphql"}),
        );
    };
    if query.contains("viewer") {
        reply(
            200,
            json!({"data": {"viewer": {"login": crate::login_for(authorization)}}}),
        )
    } else {
        reply(
            200,
            json!({"errors": [{"message": "fakehub's GraphQL answers only { viewer { login } }"}]}),
        )
    }
}

fn reply(status: u16, value: Value) -> Plan {
    Plan::Reply {
        status,
        body: Some(Bytes::from(value.to_string())),
    }
}
