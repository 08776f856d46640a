//! The shipped monitoring matches the service (issue 16): every metric name that an alert
//! rule (deploy/prometheus/alerts.yml) or a dashboard panel (deploy/grafana/flashsale.json)
//! queries is exported on `/metrics` by a running scale-out instance.

use crate::helpers::deploy_file;
use crate::scale_out::{Cleanup, TOKEN, spawn_instance};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Written by Prometheus itself for every target, not by the service.
const PROMETHEUS_OWN: &[&str] = &["up"];

/// Aggregations may be followed by `by (...)` rather than `(`: never metric names.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
];

/// Removes every bracketed part opened by `open` (label matchers, ranges), strings included.
fn strip(expr: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for c in expr.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '{' | '[') => depth += 1,
            (None, '}' | ']') => depth = depth.saturating_sub(1),
            (None, c) if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The metric names a PromQL expression selects: identifiers that are not functions,
/// keywords, or label names inside `by (...)`-style clauses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let text = strip(expr);
    let chars: Vec<char> = text.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if KEYWORDS.contains(&word.as_str()) {
                // The parenthesised label list after these names labels, not metrics.
                skip_group = matches!(
                    word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
            } else if next != Some(&'(') && !AGGREGATIONS.contains(&word.as_str()) {
                names.insert(word);
            }
            continue;
        }
        if c == '(' && skip_group {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_group = false;
        } else if c.is_ascii_digit() {
            // Numbers and durations (5m, 0.99, 1e3) are not names.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        } else if !c.is_whitespace() {
            skip_group = false;
        }
        i += 1;
    }
    names
}

/// Every `expr:` of the rules file (inline or a `|` block).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    for (k, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        if rest.trim() == "|" {
            let block: Vec<&str> = lines[k + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .copied()
                .collect();
            exprs.push(block.join("\n"));
        } else {
            exprs.push(rest.trim().to_owned());
        }
    }
    exprs
}

/// Every `expr` string anywhere in the dashboard.
fn dashboard_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// Metric names on `/metrics` (histograms as their `_bucket`/`_sum`/`_count` series).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_promql_name_extractor_finds_metrics_and_nothing_else() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(a_bucket{route="/x/{id}", le="+Inf"}[5m])))
           / on(instance) group_left(job) b_total offset 1m and on() max(c) > 0.25"#,
    );
    let want: BTreeSet<String> = ["a_bucket", "b_total", "c"].map(String::from).into();
    assert_eq!(names, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_query_is_exported() {
    let rules = rule_exprs(&deploy_file("prometheus/alerts.yml"));
    assert_eq!(rules.len(), 8, "one expr per alert rule");
    let dashboard: Value = serde_json::from_str(&deploy_file("grafana/flashsale.json")).unwrap();
    let mut panels = Vec::new();
    dashboard_exprs(&dashboard, &mut panels);
    assert!(panels.len() >= 10, "{panels:?}");
    let queried: BTreeSet<String> = rules
        .iter()
        .chain(&panels)
        .flat_map(|e| metric_names(e))
        .filter(|n| !PROMETHEUS_OWN.contains(&n.as_str()))
        .collect();
    assert!(queried.len() >= 6, "{queried:?}");

    // A scale-out instance (the dependency metrics exist there) with an open sale.
    let name = flashsale_testkit::isolation::unique("mon");
    let _cleanup = Cleanup::named(&name);
    let (address, stop) = spawn_instance(&name).await;
    let client = reqwest::Client::new();
    let now = time::OffsetDateTime::now_utc();
    let format = &time::format_description::well_known::Rfc3339;
    let created = client
        .post(format!("{address}/api/admin/sales"))
        .bearer_auth(TOKEN)
        .json(&json!({
            "name": "monitored", "stock": 5, "per_user_limit": 1,
            "starts_at": now.format(format).unwrap(),
            "ends_at": (now + time::Duration::hours(1)).format(format).unwrap(),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let sale_id = created.json::<Value>().await.unwrap()["sale_id"].clone();
    // A purchase series appears once a purchase has been answered (none are pre-created).
    let bought = client
        .post(format!("{address}/api/sales/{sale_id}/orders"))
        .json(&json!({"user_id": "monitored-buyer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bought.status(), reqwest::StatusCode::CREATED);

    // The store-sampled series appear at the next upkeep tick (every 5 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (missing, text) = loop {
        let text = client
            .get(format!("{address}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let have = exported(&text);
        let missing: Vec<&String> = queried.iter().filter(|n| !have.contains(*n)).collect();
        // The stock gauge may have been sampled before the purchase: wait for the next tick.
        let sampled_after_purchase = text
            .lines()
            .any(|l| l.starts_with("flashsale_sale_stock_remaining{") && l.ends_with("} 4"));
        if (missing.is_empty() && sampled_after_purchase) || Instant::now() > deadline {
            let missing: Vec<String> = missing.into_iter().cloned().collect();
            break (missing, text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.cancel();
    assert!(
        missing.is_empty(),
        "queried by deploy/ but not exported: {missing:?}"
    );
    // And the sampled values say what is true: ready, both dependencies up, one admission
    // call, 4 units left.
    for line in [
        "flashsale_ready 1",
        "flashsale_dependency_up{dependency=\"redis\"} 1",
        "flashsale_dependency_up{dependency=\"postgres\"} 1",
        "flashsale_reservations_released_total 0",
        // The one purchase went to Redis in one admission call of one attempt.
        "flashsale_admission_calls_total 1",
        "flashsale_admission_attempts_total 1",
        "flashsale_admission_calls_by_size_total{le=\"1\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("flashsale_sale_stock_remaining{") && l.ends_with("} 4")),
        "{text}"
    );
}
