//! Endpoints: the ready and not-ready addresses of a Service's tasks and the
//! ports they serve, written by the endpoints controller.

use api_types::Endpoints;
use serde_json::{Value, json};

use super::{Column, Typed};

/// How many addresses the ENDPOINTS column shows before `+ N more...`, as kubectl.
const SHOWN: usize = 3;

/// The Endpoints strategy.
pub fn strategy() -> Typed<Endpoints> {
    Typed::new(vec![Column {
        name: "Endpoints",
        kind: "string",
        description: "The ready addresses and their ports, as IP:PORT",
        priority: 0,
        cell: endpoints,
    }])
}

/// `10.77.1.5:8080,10.77.2.5:8080 + 2 more...`, as kubectl shows Endpoints.
fn endpoints(object: &Value) -> Value {
    let mut all = Vec::new();
    for subset in object
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ports: Vec<i64> = subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("port").and_then(Value::as_i64))
            .collect();
        for address in subset
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ip = address
                .get("ip")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if ports.is_empty() {
                all.push(ip.to_owned());
            }
            for port in &ports {
                all.push(format!("{ip}:{port}"));
            }
        }
    }
    if all.is_empty() {
        return json!("<none>");
    }
    let more = all.len().saturating_sub(SHOWN);
    all.truncate(SHOWN);
    let mut text = all.join(",");
    if more > 0 {
        text.push_str(&format!(" + {more} more..."));
    }
    json!(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Strategy;

    #[test]
    fn the_endpoints_column_lists_ready_addresses_with_their_ports() {
        let columns = strategy().columns();
        let column = columns
            .iter()
            .find(|c| c.name == "Endpoints")
            .unwrap_or_else(|| panic!("no Endpoints column"));
        let ep = json!({"subsets": [{
            "addresses": [{"ip": "10.77.1.5"}, {"ip": "10.77.2.5"}],
            "notReadyAddresses": [{"ip": "10.77.3.5"}],
            "ports": [{"port": 8080}, {"port": 9090}],
        }]});
        assert_eq!(
            (column.cell)(&ep),
            json!("10.77.1.5:8080,10.77.1.5:9090,10.77.2.5:8080 + 1 more...")
        );
        assert_eq!((column.cell)(&json!({})), json!("<none>"));
    }
}
