//! Kernel requirements: kernel-config/requirements.txt lists `CONFIG_X=y`, `=m` or `=y|m` with a reason;
//! a kernel's config is checked against it (by `ferry build` and by a test).

#[derive(Debug, PartialEq)]
pub struct Problem {
    pub option: String,
    pub want: String,
    pub have: String,
}

pub fn check(config: &str, requirements: &str) -> Vec<Problem> {
    let mut have = std::collections::HashMap::new();
    for l in config.lines() {
        if let Some((k, v)) = l.split_once('=') {
            have.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    let mut problems = Vec::new();
    for line in crate::util::data_lines(requirements) {
        let Some((opt, want)) = line.split_once('=') else { continue };
        let (opt, want) = (opt.trim(), want.trim());
        let got = have.get(opt).cloned().unwrap_or_else(|| "not set".into());
        if !want.split('|').any(|w| w == got) {
            problems.push(Problem { option: opt.into(), want: want.into(), have: got });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn finds_missing_and_wrong_options() {
        let cfg = "CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\n";
        let req = "CONFIG_A=y  # built in\nCONFIG_B=y|m\nCONFIG_C=y|m # needed\n";
        let p = check(cfg, req);
        assert_eq!(p, vec![Problem { option: "CONFIG_C".into(), want: "y|m".into(), have: "not set".into() }]);
        assert_eq!(check("CONFIG_A=m\n", "CONFIG_A=y").len(), 1);
    }
}
