//! The `switchyard` command: `serve` runs the proxy, `check` validates a config, `keys` manages client
//! keys through the admin API of a running proxy, `store accept-current` re-arms a store refused at
//! start for holding less than its high-water mark.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use switchyard::config;
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc's malloc: under load glibc spent ~15% of the CPU in malloc/free and its
/// per-thread arenas kept ~30 MB more after load (load-tests/RESULTS.md has the comparison).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "An OpenAI-compatible LLM routing proxy"
)]
struct Cli {
    /// Log format (default: text on a terminal, json otherwise).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The configuration file.
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = "profiles.yaml")]
        config: PathBuf,
        /// Listen address (overrides server.listen).
        #[arg(long, env = "SWITCHYARD_LISTEN")]
        listen: Option<SocketAddr>,
        /// Data directory for the sled store (overrides server.data_dir).
        #[arg(long, env = "SWITCHYARD_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// HTTP worker threads (default: one per core).
        #[arg(long, env = "SWITCHYARD_WORKERS")]
        workers: Option<usize>,
        /// How long in-flight requests and streams may take to finish after SIGTERM.
        #[arg(long, env = "SWITCHYARD_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
        shutdown_timeout: std::time::Duration,
        /// Do not reload when the config file changes (SIGHUP and POST /admin/reload still work).
        #[arg(long, env = "SWITCHYARD_NO_WATCH")]
        no_watch: bool,
    },
    /// Validate a configuration file without starting anything.
    Check {
        /// The configuration file.
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = "profiles.yaml")]
        config: PathBuf,
    },
    /// Sign a profile with `auth: {type: oauth2}` in: prints a URL to open in a browser, waits for the
    /// callback on 127.0.0.1 and stores the tokens, encrypted, in the data directory. Stop the server
    /// first: the store allows one process per directory.
    Login {
        /// The profile id.
        profile: String,
        /// The configuration file.
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = "profiles.yaml")]
        config: PathBuf,
        /// Data directory of the sled store (overrides server.data_dir).
        #[arg(long, env = "SWITCHYARD_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Operate on the store in the data directory. Stop the server first: the store allows one
    /// process per directory.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Manage client API keys through the admin API of a running proxy (admin token from
    /// SWITCHYARD_ADMIN_TOKEN, or the variable the config's auth.admin_token_env names).
    Keys {
        /// The proxy's base URL (default: http:// and the config's server.listen).
        #[arg(long, global = true, env = "SWITCHYARD_URL")]
        url: Option<String>,
        /// The configuration file, read for the default URL and the admin token's variable.
        #[arg(
            long,
            global = true,
            env = "SWITCHYARD_CONFIG",
            default_value = "profiles.yaml"
        )]
        config: PathBuf,
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Accept what the store holds now as its high-water mark, so that `serve` starts on it again.
    /// For after a refusal ("it holds less than its high-water mark"), once what can be restored from
    /// a backup has been: whatever is still missing is then lost for good.
    AcceptCurrent {
        /// The configuration file, read only for server.data_dir when --data-dir is not given.
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = "profiles.yaml")]
        config: PathBuf,
        /// Data directory of the sled store (overrides server.data_dir).
        #[arg(long, env = "SWITCHYARD_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; its secret is printed once, alone, on the last line.
    Create {
        #[arg(long)]
        name: String,
        /// The account the key belongs to.
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        tier: Option<String>,
        /// Allowed models (comma-separated) and/or `admin`; none: every model.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// e.g. 30d, 12h (default: never expires).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// List keys: id, name, prefix, status, expiry.
    List {
        /// Only this account's keys.
        #[arg(long)]
        account: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key at once.
    Revoke { id: String },
    /// Give a key a new secret (printed on the last line); the old one works for the grace period.
    Rotate {
        id: String,
        /// How long the old secret keeps working (default 1h; 0s ends it now).
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<std::time::Duration>,
    },
}

fn init_tracing(format: Option<LogFormat>) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Keys {
            url,
            config,
            command,
        } => match keys_command(url, &config, command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Login {
            profile,
            config,
            data_dir,
        } => match login_command(&profile, &config, data_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Store { command } => match store_command(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config } => match config::check_file(&config) {
            Ok(checked) => {
                // Valid, so still a success; each warning line says what will not work yet.
                for warning in &checked.warnings {
                    eprintln!("{warning}");
                }
                let warnings = match checked.warnings.len() {
                    0 => String::new(),
                    1 => " (1 warning)".to_owned(),
                    n => format!(" ({n} warnings)"),
                };
                println!(
                    "OK: {}: {} profiles, {} models{warnings}",
                    config.display(),
                    checked.config.profiles.len(),
                    checked.config.models.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{e}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            config,
            listen,
            data_dir,
            workers,
            shutdown_timeout,
            no_watch,
        } => {
            init_tracing(cli.log_format);
            let cfg = match config::load_file(&config) {
                Ok(c) => c,
                Err(errors) => {
                    // Once, through the log, in the format the operator chose: a bare line beside
                    // each entry repeated it, and broke JSON logs.
                    for e in &errors.0 {
                        tracing::error!("{e}");
                    }
                    return ExitCode::FAILURE;
                }
            };
            let opts = switchyard::ServeOptions {
                listen: listen.unwrap_or(cfg.server.listen),
                data_dir: data_dir.unwrap_or_else(|| cfg.server.data_dir.clone()),
                workers,
                shutdown_timeout,
                watch_config: !no_watch,
            };
            let result = actix_web::rt::System::new().block_on(switchyard::serve(cfg, opts));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "switchyard stopped");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs `switchyard store accept-current`: rewrites the high-water mark from what the store holds.
fn store_command(command: StoreCommand) -> anyhow::Result<()> {
    use anyhow::Context;
    use switchyard_actors::highwater;
    let StoreCommand::AcceptCurrent { config, data_dir } = command;
    let data_dir = match data_dir {
        Some(d) => d,
        None => {
            config::load_file(&config)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .server
                .data_dir
        }
    };
    let store = switchyard_actors::store::Store::open(&data_dir).with_context(|| {
        format!(
            "cannot open the store in {} (is `switchyard serve` running on it? stop it first)",
            data_dir.display()
        )
    })?;
    // The same counts `serve` compares at start.
    let held = highwater::Counts {
        usage_records: store.count_usage_records()?,
        ledger_transactions: switchyard::limits::credits::count_transactions(&store)?,
        keys: switchyard::auth::store::AuthStore::open(&store)?.count_keys()?,
        id_counter: store.next_id()?,
    };
    let before = highwater::read(&data_dir).ok().flatten();
    // The id handed out above is durable before a mark names it.
    store.flush_blocking()?;
    highwater::write(&data_dir, &held)?;
    let describe = |c: &highwater::Counts| {
        format!(
            "{} usage records, {} ledger transactions, {} keys",
            c.usage_records, c.ledger_transactions, c.keys
        )
    };
    println!(
        "{}: the high-water mark now says {}",
        data_dir.join(highwater::FILE).display(),
        describe(&held)
    );
    if let Some(before) = before {
        println!("it said {}", describe(&before));
    }
    Ok(())
}

/// Runs `switchyard login PROFILE`: the OAuth2 PKCE flow, tokens sealed into the store.
fn login_command(
    profile: &str,
    config_path: &std::path::Path,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let cfg = config::load_file(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let p = cfg
        .profile(profile)
        .with_context(|| format!("no profile {profile:?} in {}", config_path.display()))?;
    let oauth = p
        .oauth
        .as_ref()
        .with_context(|| format!("profile {profile:?} has no `auth: {{type: oauth2, ...}}`"))?;
    let data_dir = data_dir.unwrap_or_else(|| cfg.server.data_dir.clone());
    let store = switchyard_actors::store::Store::open(&data_dir).with_context(|| {
        format!(
            "cannot open the store in {} (is `switchyard serve` running on it? stop it first)",
            data_dir.display()
        )
    })?;
    let tokens = switchyard::upstream::oauth::TokenStore::open(&store, &data_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = std::io::stdout();
    runtime.block_on(switchyard::upstream::oauth::login(
        profile,
        oauth,
        &tokens,
        &mut out,
        switchyard::upstream::oauth::login::CALLBACK_TIMEOUT,
    ))?;
    store.flush_blocking()?;
    Ok(())
}

/// Runs a `switchyard keys` command against the admin API.
fn keys_command(
    url: Option<String>,
    config: &std::path::Path,
    command: KeysCommand,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let loaded = config::load_file(config).ok();
    let token_env = loaded.as_ref().map_or("SWITCHYARD_ADMIN_TOKEN", |c| {
        c.auth.admin_token_env.as_str()
    });
    let token = std::env::var(token_env)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .with_context(|| format!("set {token_env} to the proxy's admin token"))?;
    let base = match url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let listen = loaded.map_or_else(
                || SocketAddr::from(([127, 0, 0, 1], 8080)),
                |c| c.server.listen,
            );
            if listen.port() == 0 {
                anyhow::bail!("the config listens on port 0; pass --url");
            }
            let ip = match listen.ip() {
                std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
                    std::net::Ipv4Addr::LOCALHOST.into()
                }
                std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
                    std::net::Ipv6Addr::LOCALHOST.into()
                }
                ip => ip,
            };
            format!("http://{}", SocketAddr::new(ip, listen.port()))
        }
    };
    let (method, path, body) = match &command {
        KeysCommand::Create {
            name,
            account,
            tier,
            scopes,
            expires_in,
        } => {
            let mut b = serde_json::json!({"name": name, "scopes": scopes});
            if let Some(a) = account {
                b["account"] = a.as_str().into();
            }
            if let Some(t) = tier {
                b["tier"] = t.as_str().into();
            }
            if let Some(d) = expires_in {
                b["expires_in"] = d.as_secs().into();
            }
            (reqwest::Method::POST, "/admin/keys".to_owned(), Some(b))
        }
        KeysCommand::List { account, .. } => {
            let query = account
                .as_ref()
                .map_or(String::new(), |a| format!("?account={a}"));
            (reqwest::Method::GET, format!("/admin/keys{query}"), None)
        }
        KeysCommand::Revoke { id } => (reqwest::Method::DELETE, format!("/admin/keys/{id}"), None),
        KeysCommand::Rotate { id, grace } => {
            let b = match grace {
                Some(g) => serde_json::json!({"grace": g.as_secs()}),
                None => serde_json::json!({}),
            };
            (
                reqwest::Method::POST,
                format!("/admin/keys/{id}/rotate"),
                Some(b),
            )
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let target = format!("{base}{path}");
    let (status, text) = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let mut req = client.request(method, &target).bearer_auth(&token);
        if let Some(b) = &body {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(b)?);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {base}"))?;
        let status = resp.status();
        anyhow::Ok((status, resp.text().await?))
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let message = value["error"]["message"].as_str().unwrap_or(text.as_str());
        anyhow::bail!("{status}: {message}");
    }
    let field = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or("-").to_owned();
    match command {
        KeysCommand::Create { .. } | KeysCommand::Rotate { .. } => {
            let secret = value["key"].as_str().context("the answer holds no key")?;
            println!("id:      {}", field(&value, "id"));
            println!("name:    {}", field(&value, "name"));
            println!("prefix:  {}", field(&value, "prefix"));
            println!("account: {}", field(&value, "account"));
            println!(
                "expires: {}",
                value["expires_at"].as_str().unwrap_or("never")
            );
            if let Some(until) = value["previous_valid_until"].as_str() {
                println!("the previous secret works until {until}");
            }
            println!("The secret below is shown once; store it now.");
            println!("{secret}");
        }
        KeysCommand::List { json: true, .. } => {
            println!("{}", serde_json::to_string_pretty(&value)?)
        }
        KeysCommand::List { json: false, .. } => {
            let rows: Vec<[String; 5]> = value["data"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|k| {
                    let expires = k["expires_at"].as_str().unwrap_or("never").to_owned();
                    [
                        field(k, "id"),
                        field(k, "name"),
                        field(k, "prefix"),
                        field(k, "status"),
                        expires,
                    ]
                })
                .collect();
            let header = ["ID", "NAME", "PREFIX", "STATUS", "EXPIRES"].map(str::to_owned);
            let mut widths = header.clone().map(|h| h.chars().count());
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            for row in std::iter::once(&header).chain(&rows) {
                let cells: Vec<String> = row
                    .iter()
                    .zip(widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                println!("{}", cells.join("  ").trim_end());
            }
        }
        KeysCommand::Revoke { id } => println!("revoked {id} ({})", field(&value, "status")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// `.cargo/config.toml` compiles `tcache_max:8192` into jemalloc (what the idle memory after load
    /// depends on); a build without it caches up to jemalloc's default, 32 KiB.
    #[test]
    fn the_allocator_caches_objects_of_at_most_8_kib_per_thread() {
        let max = tikv_jemalloc_ctl::opt::tcache_max::read().unwrap();
        assert_eq!(
            max,
            8192,
            "jemalloc's tcache_max (from .cargo/config.toml's JEMALLOC_SYS_WITH_MALLOC_CONF, or \
             _RJEM_MALLOC_CONF in the environment: {:?})",
            std::env::var("_RJEM_MALLOC_CONF").ok()
        );
    }
}
