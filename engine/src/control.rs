//! The control socket behind `/etc/init.d/docker start|stop|restart|status`: one command line in, one
//! reply line out. Exit codes follow LSB init scripts (status: 0 running, 3 stopped).
use crate::error::{Context, Error, Result};
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub const SOCKET: &str = ferry_contract::paths::ENGINE_SOCK;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Command {
    Start,
    Stop,
    Restart,
    Status,
    /// From the engine manager's own SIGTERM (init's shutdown); never accepted on the control socket.
    Shutdown,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        match s.trim() {
            "start" => Some(Command::Start),
            "stop" => Some(Command::Stop),
            "restart" => Some(Command::Restart),
            "status" => Some(Command::Status),
            _ => None,
        }
    }
    pub fn word(self) -> &'static str {
        match self {
            Command::Start => "start",
            Command::Stop => "stop",
            Command::Restart => "restart",
            Command::Status => "status",
            Command::Shutdown => "shutdown",
        }
    }
}

/// Reply: exit code and a line for the user.
pub struct Reply {
    pub code: i32,
    pub text: String,
}

/// Client side (`ferry-engine ctl CMD`).
pub async fn request(socket: &Path, cmd: Command) -> Result<Reply> {
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .ctx(|| format!("connect to the engine manager at {} (is it running?)", socket.display()))?;
    s.write_all(format!("{}\n", cmd.word()).as_bytes()).await.ctx(|| "send command".into())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await.ctx(|| "read reply".into())?;
    let (code, text) = line.trim_end().split_once(' ').ok_or_else(|| Error::msg(format!("odd reply {line:?}")))?;
    Ok(Reply { code: code.parse().unwrap_or(1), text: text.to_string() })
}

pub fn format_reply(r: &Reply) -> String {
    format!("{} {}\n", r.code, r.text.replace('\n', " "))
}
