//! `mock-upstream`: the mock OpenAI-compatible upstream as a standalone process, for load tests.
//!
//! `mock-upstream --listen 127.0.0.1:0 [--latency-ms N] [--fault-rate 0.3] [--name X]` prints
//! `listening on ADDR` as its first stdout line and serves the echo until interrupted.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use switchyard_load_tests::{MockOptions, MockUpstream};

const USAGE: &str =
    "usage: mock-upstream [--listen ADDR] [--latency-ms N] [--fault-rate F] [--name NAME]
  --listen ADDR     address to listen on (default 127.0.0.1:0)
  --latency-ms N    wait N ms before every response (default 0)
  --fault-rate F    answer this share of requests (0.0..=1.0) with a 500 (default 0)
  --name NAME       name in reply texts and the x-mock-upstream header (default mock)
  --agent           answer like a coding agent's model: call the offered shell tool once, then
                    quote its output (one tool round trip; see load-tests/agents.sh)";

/// The options, and whether `--agent` was given.
fn parse(args: impl Iterator<Item = String>) -> Result<(MockOptions, bool), String> {
    let mut options = MockOptions {
        // A load test would otherwise keep every request in memory.
        record_requests: false,
        ..MockOptions::default()
    };
    let mut args = args;
    let mut agent = false;
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        if flag == "--agent" {
            agent = true;
            continue;
        }
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (flag, None),
        };
        let value = match inline.or_else(|| args.next()) {
            Some(v) => v,
            None => return Err(format!("{flag} needs a value")),
        };
        match flag.as_str() {
            "--listen" => {
                options.listen = value
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("--listen {value}: {e}"))?;
            }
            "--latency-ms" => {
                let ms = value
                    .parse::<u64>()
                    .map_err(|e| format!("--latency-ms {value}: {e}"))?;
                options.latency = Duration::from_millis(ms);
            }
            "--fault-rate" => {
                let rate = value
                    .parse::<f64>()
                    .map_err(|e| format!("--fault-rate {value}: {e}"))?;
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!("--fault-rate {value}: must be between 0 and 1"));
                }
                options.fault_rate = rate;
            }
            "--name" => options.name = value,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok((options, agent))
}

#[tokio::main]
async fn main() -> ExitCode {
    let (options, agent) = match parse(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mock-upstream: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listen = options.listen;
    let mock = match MockUpstream::start_with(options).await {
        Ok(mock) => mock,
        Err(e) => {
            eprintln!("mock-upstream: cannot listen on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    if agent {
        mock.set_default(switchyard_load_tests::Reply::Agent);
    }
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening on {}", mock.addr());
    let _ = stdout.flush();
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("mock-upstream: served {} requests", mock.request_count());
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> impl Iterator<Item = String> + '_ {
        s.split_whitespace().map(str::to_owned)
    }

    #[test]
    fn parses_flags() {
        let (o, agent) = parse(args(
            "--listen 127.0.0.1:9 --latency-ms 5 --fault-rate=0.3 --name x",
        ))
        .unwrap();
        assert!(!agent);
        assert!(parse(args("--agent --name y")).unwrap().1);
        assert_eq!(o.listen, "127.0.0.1:9".parse().unwrap());
        assert_eq!(
            (o.latency, o.fault_rate, o.name.as_str()),
            (Duration::from_millis(5), 0.3, "x")
        );
        assert!(!o.record_requests);
        assert!(parse(args("--fault-rate 2")).is_err());
        assert!(parse(args("--bogus 1")).is_err());
        assert!(parse(args("--name")).is_err());
    }
}
