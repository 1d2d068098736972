//! One optional TOML file per program (`--config <file>`), under the environment, under the
//! flags (feature `config-file`).
//!
//! Every option of a program can be set in three places besides its built-in default; the
//! first that has it wins:
//!
//! 1. a flag on the command line (`--peer-timeout-ms 500`);
//! 2. its environment variable (`AGENT_PEER_TIMEOUT_MS=500`), as `--help` lists it;
//! 3. the file named by `--config` (or its environment variable), one key per option, named
//!    like the flag without its dashes (`peer-timeout-ms = 500`; `peer_timeout_ms` works too);
//! 4. the built-in default that `--help` shows.
//!
//! How: clap parses the command line and the environment once, which says where each value
//! came from ([`clap::ArgMatches::value_source`]); each key of the file whose option got no
//! value from a flag or the environment becomes that option's default, and clap parses again,
//! so a value from the file goes through the same checks as one from a flag. A key that names
//! no option, a value of the wrong kind, or one the option refuses stops the program at
//! start-up with a message naming the file, the key and what is wrong.
//!
//! With subcommands (the client), the keys apply to the subcommand being run; a key that no
//! subcommand knows is an error, one that only another subcommand knows is ignored (one file
//! serves `client serve` and `client run` alike).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

/// The id of the option that names the file (a field `config: Option<PathBuf>` in the derive).
pub const CONFIG_ID: &str = "config";

/// For a program's `after_help`: where options come from, in order.
pub const PRECEDENCE_HELP: &str = "Every option can also be set by its environment variable (shown with it) or in the \
TOML file given with --config, as `option-name = value` (the flag without its dashes, e.g. `peer-timeout-ms = 500`; \
lists as arrays or comma-separated strings). A flag beats the environment, which beats the file, which beats the \
default.";

/// Why the configuration was refused.
#[derive(Debug)]
pub enum Error {
    /// From clap: a bad flag or environment variable, or `--help` and `--version` (which
    /// [`clap::Error::exit`] prints to stdout with status 0).
    Clap(clap::Error),
    /// The configuration file: unreadable, not TOML, an unknown key, or a bad value.
    File(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Clap(e) => write!(f, "{e}"),
            Error::File(message) => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<clap::Error> for Error {
    fn from(e: clap::Error) -> Self {
        Error::Clap(e)
    }
}

impl Error {
    /// Prints the error (or the help) and exits: 0 for `--help`/`--version`, 2 otherwise.
    pub fn exit(self) -> ! {
        match self {
            Error::Clap(e) => e.exit(),
            Error::File(message) => {
                eprintln!("error: {message}");
                std::process::exit(2)
            }
        }
    }
}

/// [`clap::Parser::parse`] with the configuration file: exits on an error.
pub fn parse<T: clap::Parser>() -> T {
    try_parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
}

/// Parses `args` (the program's name first), the environment and the configuration file.
pub fn try_parse_from<T, I, S>(args: I) -> Result<T, Error>
where
    T: clap::Parser,
    I: IntoIterator<Item = S>,
    S: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cmd = T::command();
    let first = cmd.clone().try_get_matches_from(&args)?;
    let Some(path) = first.get_one::<PathBuf>(CONFIG_ID).cloned() else {
        return Ok(T::from_arg_matches(&first)?);
    };
    let text = read_file(&path)?;
    parse_with_file(cmd, &args, &first, &path, &text)
}

/// For the programs' tests: `args` (the program's name first) parsed with the example
/// configuration file `example` as if every option it only mentions in a comment (`# key =
/// value`) were set, so that an example cannot name an option that does not exist, or a value
/// the option refuses.
pub fn try_parse_example_with_commented_options<T, I, S>(args: I, example: &Path) -> Result<T, Error>
where
    T: clap::Parser,
    I: IntoIterator<Item = S>,
    S: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cmd = T::command();
    let first = cmd.clone().try_get_matches_from(&args)?;
    let text = with_commented_options_enabled(&read_file(example)?);
    parse_with_file(cmd, &args, &first, example, &text)
}

fn read_file(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::File(format!("cannot read the configuration file {}: {e}", path.display())))
}

/// Parses `args` again with the file's keys (`text`, read from `path`) as the defaults of the
/// options the first parse (`first`) got from neither a flag nor the environment.
fn parse_with_file<T: clap::Parser>(
    cmd: Command,
    args: &[OsString],
    first: &ArgMatches,
    path: &Path,
    text: &str,
) -> Result<T, Error> {
    let cmd = with_file_defaults(cmd, first, path, text)?;
    let matches = cmd.try_get_matches_from(args)?;
    Ok(T::from_arg_matches(&matches)?)
}

/// `cmd` with each key of the file as the default of its option, unless the first parse got
/// that option from a flag or the environment.
fn with_file_defaults(mut cmd: Command, first: &ArgMatches, path: &Path, text: &str) -> Result<Command, Error> {
    let file = path.display();
    let table = text
        .parse::<toml::Table>()
        .map_err(|e| Error::File(format!("{file} is not valid TOML: {}", e.to_string().trim_end())))?;
    // The command whose options the keys set: the program, or the subcommand being run.
    let subcommand = first.subcommand().map(|(name, matches)| (name.to_string(), matches));
    let known = |c: &Command| c.get_arguments().map(|a| a.get_id().to_string()).collect::<Vec<_>>();
    let mut everywhere = known(&cmd);
    for sub in cmd.get_subcommands() {
        everywhere.extend(known(sub));
    }
    for (key, value) in &table {
        let id = key.replace('-', "_");
        if id == CONFIG_ID || id == "help" || id == "version" || !everywhere.contains(&id) {
            let mut options: Vec<String> = everywhere
                .iter()
                .filter(|o| !matches!(o.as_str(), CONFIG_ID | "help" | "version"))
                .map(|o| o.replace('_', "-"))
                .collect();
            options.sort();
            options.dedup();
            return Err(Error::File(format!(
                "{file}: unknown option `{key}`; the options are: {}",
                options.join(", ")
            )));
        }
        let (target, matches) = match &subcommand {
            Some((name, sub_matches)) if !known(&cmd).contains(&id) => {
                match cmd.find_subcommand(name).filter(|s| known(s).contains(&id)) {
                    Some(_) => (Some(name.clone()), *sub_matches),
                    None => continue, // an option of another subcommand
                }
            }
            _ if known(&cmd).contains(&id) => (None, first),
            _ => continue, // an option of a subcommand not being run
        };
        if matches!(matches.value_source(&id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        let owner = match &target {
            Some(name) => cmd.find_subcommand(name).expect("found above"),
            None => &cmd,
        };
        let arg = owner.get_arguments().find(|a| a.get_id() == id.as_str()).expect("known above");
        let text = value_text(value, arg.get_value_delimiter())
            .map_err(|what| Error::File(format!("{file}: `{key}`: {what}")))?;
        check_value(owner, arg, &text).map_err(|why| Error::File(format!("{file}: `{key} = {value}`: {why}")))?;
        let set = |c: Command| c.mut_arg(&id, |a| a.default_value(text.clone()));
        cmd = match target {
            Some(name) => cmd.mut_subcommand(name, set),
            None => set(cmd),
        };
    }
    Ok(cmd)
}

/// A TOML value as the text a flag would carry.
fn value_text(value: &toml::Value, delimiter: Option<char>) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) => {
            let Some(delimiter) = delimiter else {
                return Err("takes one value, not a list".into());
            };
            let items: Result<Vec<String>, String> = items
                .iter()
                .map(|item| match item {
                    toml::Value::Array(_) | toml::Value::Table(_) => Err("a list of lists or tables".to_string()),
                    item => value_text(item, None),
                })
                .collect();
            Ok(items?.join(&delimiter.to_string()))
        }
        toml::Value::Datetime(_) | toml::Value::Table(_) => {
            Err("expected a string, a number, a boolean or a list".into())
        }
    }
}

/// Whether `arg` takes `text`: the same parser as for a flag, on a command of that one option.
fn check_value(owner: &Command, arg: &clap::Arg, text: &str) -> Result<(), String> {
    let probe = arg.clone().env(None::<&'static str>).default_value(None::<&'static str>).required(false);
    let mut args = vec![OsString::from("probe")];
    let flag = format!("--{}", arg.get_long().unwrap_or(arg.get_id().as_str()));
    if arg.get_action().takes_values() {
        args.push(format!("{flag}={text}").into());
    } else {
        // A switch (`--log-json`): true or false, nothing else.
        match text {
            "true" => args.push(flag.into()),
            "false" => {}
            other => return Err(format!("expected true or false, not {other:?}")),
        }
    }
    let probe = Command::new(owner.get_name().to_string()).arg(probe);
    probe.try_get_matches_from(args).map(|_| ()).map_err(|e| {
        // clap's message, without its "error: " prefix, usage and help lines.
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        first.trim_start_matches("error: ").to_string()
    })
}

/// An example file's text with every commented-out option (`# key = value`) made active.
/// Prose comments are left as they are.
fn with_commented_options_enabled(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_option_line(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `key = value`, the key in lower case with dashes or underscores.
fn is_option_line(line: &str) -> bool {
    line.split_once(" = ").is_some_and(|(key, value)| {
        !key.is_empty() && !value.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '-' || c == '_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn commented_options_are_enabled_and_prose_is_left_alone() {
        let text = "# The address. Default \"x\".\n# listen = \"127.0.0.1:1\"\nlog-json = false\n# Set it so: a = b.\n#tls-ca = \"x\"";
        assert_eq!(
            with_commented_options_enabled(text),
            "# The address. Default \"x\".\nlisten = \"127.0.0.1:1\"\nlog-json = false\n# Set it so: a = b.\n#tls-ca = \"x\""
        );
    }

    /// A program with the kinds of options ours have. Environment variables are unique to
    /// these tests, since tests run in parallel in one process.
    #[derive(Debug, Parser, PartialEq)]
    struct Args {
        #[arg(long, env = "CFGTEST_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "CFGTEST_LISTEN", default_value = "127.0.0.1:8000")]
        listen: String,
        #[arg(long, env = "CFGTEST_TIMEOUT_MS", default_value_t = 1000)]
        timeout_ms: u64,
        #[arg(long, env = "CFGTEST_MEMBERS", value_delimiter = ',', default_value = "a,b")]
        members: Vec<String>,
        #[arg(long, env = "CFGTEST_SUPERVISOR")]
        supervisor: Option<String>,
        #[arg(long, env = "CFGTEST_LOG_JSON", value_parser = clap::builder::BoolishValueParser::new())]
        log_json: bool,
    }

    /// Tests run in parallel in one process, and some set environment variables.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn env_lock() -> std::sync::MutexGuard<'static, ()> {
        ENV.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A configuration file for one test, removed when the test ends (even on failure).
    struct TempFile(PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    impl std::ops::Deref for TempFile {
        type Target = std::path::Path;
        fn deref(&self) -> &std::path::Path {
            &self.0
        }
    }

    fn file(name: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("rmw-config-test-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn parse(args: &[&str]) -> Result<Args, Error> {
        let _env = env_lock();
        try_parse_from(std::iter::once("prog").chain(args.iter().copied()))
    }

    #[test]
    fn without_a_file_the_defaults_and_flags_apply() {
        let args = parse(&["--timeout-ms", "5"]).unwrap();
        assert_eq!(args.listen, "127.0.0.1:8000");
        assert_eq!(args.timeout_ms, 5);
        assert_eq!(args.members, ["a", "b"]);
        assert_eq!(args.supervisor, None);
        assert!(!args.log_json);
    }

    #[test]
    fn the_file_beats_the_defaults() {
        let path = file(
            "beats-defaults",
            "listen = \"0.0.0.0:9\"\ntimeout-ms = 250\nmembers = [\"x\", \"y\", \"z\"]\nsupervisor = \"s:1\"\nlog_json = true\n",
        );
        let args = parse(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(args.listen, "0.0.0.0:9");
        assert_eq!(args.timeout_ms, 250);
        assert_eq!(args.members, ["x", "y", "z"]);
        assert_eq!(args.supervisor.as_deref(), Some("s:1"));
        assert!(args.log_json);
        // A list may also be one comma-separated string, as in the environment.
        let path = file("members-string", "members = \"p,q\"\n");
        assert_eq!(parse(&["--config", path.to_str().unwrap()]).unwrap().members, ["p", "q"]);
    }

    #[test]
    fn a_flag_beats_the_environment_which_beats_the_file() {
        let path = file("precedence", "timeout_ms = 250\nlisten = \"file:1\"\nlog-json = false\n");
        let config = path.to_str().unwrap();
        let from_env = {
            let _env = env_lock();
            std::env::set_var("CFGTEST_TIMEOUT_MS", "77");
            std::env::set_var("CFGTEST_LOG_JSON", "1");
            let parsed = try_parse_from::<Args, _, _>(["prog", "--config", config]);
            std::env::remove_var("CFGTEST_TIMEOUT_MS");
            std::env::remove_var("CFGTEST_LOG_JSON");
            parsed.unwrap()
        };
        assert_eq!(from_env.timeout_ms, 77, "the environment beats the file");
        assert!(from_env.log_json, "LOG_JSON=1 in the environment beats the file's false");
        assert_eq!(from_env.listen, "file:1", "the file beats the default");
        let from_flag = parse(&["--config", config, "--timeout-ms", "5", "--listen", "flag:2"]).unwrap();
        assert_eq!((from_flag.timeout_ms, from_flag.listen.as_str()), (5, "flag:2"), "a flag beats both");
    }

    #[test]
    fn the_file_can_be_named_by_the_environment() {
        let path = file("from-env", "listen = \"env-named:1\"\n");
        let _env = env_lock();
        std::env::set_var("CFGTEST_CONFIG", &*path);
        let args = try_parse_from::<Args, _, _>(["prog"]);
        std::env::remove_var("CFGTEST_CONFIG");
        assert_eq!(args.unwrap().listen, "env-named:1");
    }

    fn file_error(name: &str, text: &str) -> String {
        let path = file(name, text);
        match parse(&["--config", path.to_str().unwrap()]) {
            Err(Error::File(message)) => message,
            other => panic!("{text:?} was not refused as a file error: {other:?}"),
        }
    }

    #[test]
    fn a_bad_file_is_refused_naming_the_key_and_what_is_wrong() {
        let message = file_error("unknown", "listne = \"x\"\n");
        assert!(message.contains("unknown option `listne`") && message.contains("listen, log-json"), "{message}");
        let message = file_error("bad-number", "timeout-ms = \"soon\"\n");
        assert!(message.contains("`timeout-ms = \"soon\"`") && message.contains("invalid"), "{message}");
        let message = file_error("negative", "timeout-ms = -1\n");
        assert!(message.contains("timeout-ms"), "{message}");
        let message = file_error("list-for-one", "listen = [\"a\", \"b\"]\n");
        assert!(message.contains("`listen`: takes one value, not a list"), "{message}");
        let message = file_error("bad-bool", "log-json = \"maybe\"\n");
        assert!(message.contains("log-json") && message.contains("true or false"), "{message}");
        let message = file_error("not-toml", "listen = \n");
        assert!(message.contains("not valid TOML"), "{message}");
        let message = file_error("config-in-config", "config = \"other.toml\"\n");
        assert!(message.contains("unknown option `config`"), "{message}");
        match parse(&["--config", "/nonexistent/rmw.toml"]) {
            Err(Error::File(message)) => assert!(message.contains("cannot read the configuration file"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[derive(Debug, Parser)]
    struct WithSubcommands {
        #[arg(long, global = true, env = "CFGTEST_SUB_CONFIG")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        Serve {
            #[arg(long, default_value = "l:1")]
            listen: String,
            #[arg(long, default_value = "s:1")]
            supervisor: String,
        },
        Status {
            #[arg(long, default_value = "s:1")]
            supervisor: String,
        },
    }

    #[test]
    fn with_subcommands_the_keys_apply_to_the_one_being_run() {
        let path = file("subcommands", "listen = \"l:2\"\nsupervisor = \"s:2\"\n");
        let config = path.to_str().unwrap();
        let parsed: WithSubcommands = try_parse_from(["prog", "status", "--config", config]).unwrap();
        assert!(matches!(parsed.command, Sub::Status { supervisor } if supervisor == "s:2"));
        let parsed: WithSubcommands = try_parse_from(["prog", "serve", "--config", config]).unwrap();
        assert!(matches!(parsed.command, Sub::Serve { listen, supervisor } if listen == "l:2" && supervisor == "s:2"));
        let bad = file("subcommands-bad", "nowhere = 1\n");
        let refused = try_parse_from::<WithSubcommands, _, _>(["prog", "status", "--config", bad.to_str().unwrap()]);
        assert!(matches!(refused, Err(Error::File(m)) if m.contains("unknown option `nowhere`")));
    }
}
