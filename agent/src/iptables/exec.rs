//! Doing: runs [`Step`]s with the `iptables` binary, or renders them as a shell script
//! for `--dry-run`.

use std::io;
use std::process::{Command, Output};

use tracing::debug;

use super::{LOCK_WAIT_SECONDS, Step};

/// `While` steps give up after this many deletions of the same rule.
const MAX_DUPLICATES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("{program} not found; install iptables (apt-get install iptables)")]
    NotInstalled { program: String },
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("`{command}` failed ({status}): {stderr}{hint}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
        hint: &'static str,
    },
    #[error(
        "`{command}` still finds the rule after {MAX_DUPLICATES} deletions; inspect the \
         table with `iptables -t nat -S`"
    )]
    Stuck { command: String },
}

/// The `iptables` binary (a name on `PATH` or a path) and how it is called.
#[derive(Debug, Clone)]
pub struct Iptables {
    program: String,
}

impl Default for Iptables {
    fn default() -> Self {
        Self::new("iptables")
    }
}

impl Iptables {
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
        }
    }

    /// Fails with an install hint when the binary is missing.
    pub fn check_installed(&self) -> Result<(), IptablesError> {
        let out = self.output(&["--version".to_owned()])?;
        if out.status.success() {
            debug!(version = %String::from_utf8_lossy(&out.stdout).trim(), "iptables found");
            Ok(())
        } else {
            Err(self.failed(&["--version".to_owned()], &out))
        }
    }

    /// Runs `steps` in order; stops at the first error.
    pub fn execute(&self, steps: &[Step]) -> Result<(), IptablesError> {
        for step in steps {
            match step {
                Step::Run(args) => self.run(args)?,
                Step::Unless { check, then } => {
                    if !self.probe(check)? {
                        self.run(then)?;
                    }
                }
                Step::While { check, then } => {
                    let mut deleted = 0;
                    while self.probe(check)? {
                        if deleted == MAX_DUPLICATES {
                            return Err(IptablesError::Stuck {
                                command: self.command_line(check),
                            });
                        }
                        self.run(then)?;
                        deleted += 1;
                    }
                }
                Step::If { check, then } => {
                    if self.probe(check)? {
                        self.execute(then)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The steps as a POSIX shell script that does the same (for `--dry-run`), one
    /// step a line.
    pub fn script(&self, steps: &[Step]) -> String {
        steps.iter().map(|s| self.shell(s) + "\n").collect()
    }

    fn shell(&self, step: &Step) -> String {
        let q = |args: &[String]| self.command_line(args);
        match step {
            Step::Run(args) => q(args),
            Step::Unless { check, then } => format!("{} >/dev/null 2>&1 || {}", q(check), q(then)),
            Step::While { check, then } => {
                format!("while {} >/dev/null 2>&1; do {}; done", q(check), q(then))
            }
            Step::If { check, then } => {
                let body: Vec<String> = then.iter().map(|s| self.shell(s)).collect();
                format!(
                    "if {} >/dev/null 2>&1; then {}; fi",
                    q(check),
                    body.join("; ")
                )
            }
        }
    }

    /// The full command line, shell-quoted: `iptables -w 5 -t nat …`.
    pub fn command_line(&self, args: &[String]) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.lock_args().iter().map(String::as_str))
            .chain(args.iter().map(String::as_str))
            .map(shell_quote)
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn lock_args(&self) -> [String; 2] {
        ["-w".to_owned(), LOCK_WAIT_SECONDS.to_string()]
    }

    fn run(&self, args: &[String]) -> Result<(), IptablesError> {
        let out = self.output(args)?;
        if out.status.success() {
            debug!(command = %self.command_line(args), "ok");
            Ok(())
        } else {
            Err(self.failed(args, &out))
        }
    }

    /// `true` on exit 0, `false` on exit 1 (no such rule or chain), an error otherwise.
    fn probe(&self, args: &[String]) -> Result<bool, IptablesError> {
        let out = self.output(args)?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(self.failed(args, &out)),
        }
    }

    fn output(&self, args: &[String]) -> Result<Output, IptablesError> {
        let mut cmd = Command::new(&self.program);
        if args.first().is_none_or(|a| a != "--version") {
            cmd.args(self.lock_args());
        }
        cmd.args(args).output().map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                IptablesError::NotInstalled {
                    program: self.program.clone(),
                }
            } else {
                IptablesError::Spawn {
                    program: self.program.clone(),
                    source,
                }
            }
        })
    }

    fn failed(&self, args: &[String], out: &Output) -> IptablesError {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        IptablesError::Failed {
            command: self.command_line(args),
            status: out.status.to_string(),
            hint: hint(&stderr),
            stderr,
        }
    }
}

/// What to do about a failure, judged from iptables' stderr.
fn hint(stderr: &str) -> &'static str {
    if stderr.contains("Permission denied") || stderr.contains("must be root") {
        " (init-iptables needs CAP_NET_ADMIN: run it as root, or give the init container \
         the NET_ADMIN and NET_RAW capabilities)"
    } else if stderr.contains("Could not fetch rule set generation id")
        || stderr.contains("can't initialize iptables table")
        || stderr.contains("Protocol not supported")
    {
        " (this kernel lacks the backend that `iptables` uses; try the other one with \
         --iptables iptables-legacy or --iptables iptables-nft)"
    } else {
        ""
    }
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,+@%".contains(&b));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_says_how_to_install() {
        let err = Iptables::new("/nonexistent/iptables")
            .check_installed()
            .unwrap_err();
        assert!(matches!(err, IptablesError::NotInstalled { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "/nonexistent/iptables not found; install iptables (apt-get install iptables)"
        );
    }

    #[test]
    fn failures_carry_the_command_stderr_and_a_hint() {
        // `false` exits 1 without output: a failed Run is an error, a failed probe is "absent".
        let fake = Iptables::new("false");
        let steps = [Step::Unless {
            check: vec!["-C".into(), "X".into()],
            then: vec!["-A".into(), "X".into()],
        }];
        let err = fake.execute(&steps).unwrap_err().to_string();
        assert!(
            err.starts_with("`false -w 5 -A X` failed (exit status: 1)"),
            "{err}"
        );
        assert!(
            hint("iptables v1.8.9 (nf_tables): Permission denied (you must be root)")
                .contains("CAP_NET_ADMIN")
        );
        assert!(
            hint("Could not fetch rule set generation id: Invalid argument")
                .contains("iptables-legacy")
        );
        assert_eq!(
            hint("Bad rule (does a matching rule exist in that chain?)."),
            ""
        );
    }

    #[test]
    fn probes_that_succeed_run_the_conditional_commands() {
        // `true` succeeds at everything: Unless skips, If runs, While hits the bound.
        let t = Iptables::new("true");
        let args = vec!["-S".to_owned()];
        let unless = Step::Unless {
            check: args.clone(),
            then: args.clone(),
        };
        let if_step = Step::If {
            check: args.clone(),
            then: vec![Step::Run(args.clone())],
        };
        t.execute(&[unless, if_step]).unwrap();
        let stuck = t.execute(&[Step::While {
            check: args.clone(),
            then: args,
        }]);
        assert!(
            matches!(stuck, Err(IptablesError::Stuck { .. })),
            "{stuck:?}"
        );
    }

    #[test]
    fn odd_arguments_are_quoted() {
        assert_eq!(shell_quote("-t"), "-t");
        assert_eq!(shell_quote("127.0.0.0/8"), "127.0.0.0/8");
        assert_eq!(
            shell_quote("/opt/my bin/iptables"),
            "'/opt/my bin/iptables'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
