//! The shipped load balancer (deploy/nginx/nginx.conf) against the instances' own limits.

use crate::helpers::deploy_file;
use flashsale_server::config::Protection;
use std::time::Duration;

/// The body of the block opened by `opening` (for example `upstream flashsale {`).
fn block<'a>(conf: &'a str, opening: &str) -> &'a str {
    let start = conf
        .find(opening)
        .unwrap_or_else(|| panic!("no `{opening}`"))
        + opening.len();
    let mut depth = 1;
    for (i, c) in conf[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 1 => return &conf[start..start + i],
            '}' => depth -= 1,
            _ => {}
        }
    }
    panic!("`{opening}` is never closed")
}

/// The value of `directive` in `block`, comments skipped; `None` if it is not set there.
fn directive<'a>(block: &'a str, directive: &str) -> Option<&'a str> {
    block
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .find_map(|line| line.strip_prefix(directive)?.strip_prefix(' '))
        .map(|value| value.trim().trim_end_matches(';').trim())
}

/// An nginx time ("5s", "4000ms", "1m"; a bare number is seconds).
fn nginx_time(value: &str) -> Duration {
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("not an nginx time: {value}"));
    match &value[digits.len()..] {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(60 * n),
        unit => panic!("unexpected nginx time unit {unit:?} in {value}"),
    }
}

#[test]
fn the_config_readers_find_what_is_set_and_only_that() {
    let conf = "http {\n  upstream u {\n    server a;\n    # keepalive_timeout 1s;\n    keepalive_timeout 4000ms;\n  }\n  keepalive_timeout 60s;\n}\n";
    let upstream = block(conf, "upstream u {");
    assert_eq!(directive(upstream, "keepalive_timeout"), Some("4000ms"));
    assert_eq!(directive(upstream, "keepalive_requests"), None);
    assert_eq!(nginx_time("4000ms"), Duration::from_secs(4));
    assert_eq!(nginx_time("5s"), Duration::from_secs(5));
    assert_eq!(nginx_time("75"), Duration::from_secs(75));
    assert_eq!(nginx_time("1m"), Duration::from_secs(60));
}

/// An instance closes a keep-alive connection idle for its header-read timeout. If nginx may
/// still reuse it then, a request sent as the instance closes meets a reset, nginx counts the
/// healthy instance as failed (`max_fails`), and a herd after a lull gets 502 "no live
/// upstreams" (seen in deploy-test.sh's kill run). nginx must close idle connections first.
#[test]
fn nginx_closes_idle_upstream_connections_before_an_instance_does() {
    let conf = deploy_file("nginx/nginx.conf");
    let upstream = block(&conf, "upstream flashsale {");
    // Unset, nginx's default is 60 s: longer than the instance's.
    let idle = nginx_time(directive(upstream, "keepalive_timeout").unwrap_or("60s"));
    let instance_idle = Protection::default().header_read_timeout();
    assert!(
        idle < instance_idle,
        "the upstream's keepalive_timeout ({idle:?}) must be shorter than an instance's idle \
         limit (the header-read timeout, {instance_idle:?})"
    );
}
