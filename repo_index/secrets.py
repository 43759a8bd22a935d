"""Credentials in a repository, found by file name and by content, so they stay out of the context.

Issue 22: detection by name alone let 16 of 23 planted secrets (`AKIA...` keys, PEM blocks in ordinary
files, `password=` lines, service-account JSON, ...) into the context, and so to a remote endpoint.
The rules are modelled on gitleaks' and detect-secrets' (the README says why not detect-secrets
itself): provider token formats, private-key blocks, and literal values assigned to password-, secret-
and token-like names. A match names its rule and line, never the secret. Scanning is linear in the
text: each rule is one regular expression with bounded repeats, run only when its keyword occurs, over
at most `MAX_SCAN_CHARS` characters of a file that is being read anyway.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

MAX_SCAN_CHARS = 4_000_000  # beyond any file discovery admits by default (1 MB), a bound on the work
MIN_CONFIG_VALUE = 4  # `password=hunter` in settings.ini is a password
MIN_CODE_VALUE = 8  # in code, a short literal beside `token` is a name or a sentinel far more often

# (pattern on the file name, what it holds); `.example` files are templates and never match.
NAME_RULES = (
    (".env", "dotenv file"), (".env.*", "dotenv file"), (".envrc", "direnv file"),
    ("*.pem", "PEM file"), ("*.key", "key file"), ("*.p12", "PKCS#12 keystore"), ("*.pfx", "PKCS#12 keystore"),
    ("*.jks", "Java keystore"), ("*.keystore", "keystore"), ("id_rsa*", "SSH key"), ("id_dsa*", "SSH key"),
    ("id_ecdsa*", "SSH key"), ("id_ed25519*", "SSH key"), (".netrc", "netrc file"), ("_netrc", "netrc file"),
    (".pgpass", "PostgreSQL password file"), (".my.cnf", "MySQL option file"), (".htpasswd", "htpasswd file"),
    ("credentials.json", "credentials file"), ("*.kdbx", "KeePass database"), ("secrets.y*ml", "secrets file"),
    (".npmrc", "npm config"), (".pypirc", "PyPI config"), (".git-credentials", "git credential store"),
    ("kubeconfig", "kubeconfig"), ("kubeconfig.*", "kubeconfig"), ("kubeconfig-*", "kubeconfig"),
    ("kubeconfig_*", "kubeconfig"), ("*.kubeconfig", "kubeconfig"), ("*.tfstate", "Terraform state"),
)
# Names above that source files share (`kubeconfig_test.go`, `credentials.json.ts`): left to content.
NAME_RULE_CODE_SUFFIXES = frozenset({".py", ".go", ".rs", ".js", ".ts", ".java", ".c", ".h", ".cc", ".cpp",
                                     ".rb", ".md", ".rst", ".kt", ".swift", ".cs", ".php", ".scala"})
# (parent directory, file name, what it holds)
PATH_RULES = (
    (".aws", "credentials", "AWS credentials file"), (".kube", "config", "kubeconfig"),
    ("kube", "config", "kubeconfig"), (".docker", "config.json", "Docker credentials"),
)
# Files whose plain `key = value` lines are settings: an unquoted value counts there, not in code.
CONFIG_SUFFIXES = frozenset({"", ".ini", ".cfg", ".conf", ".cnf", ".env", ".properties", ".toml", ".yaml",
                             ".yml", ".json", ".xml", ".sh", ".bash", ".zsh", ".envrc", ".config", ".tfvars",
                             ".txt", ".secrets", ".credentials", ".local"})

PLACEHOLDERS = frozenset({
    "none", "null", "nil", "true", "false", "undefined", "changeme", "change_me", "change-me", "password",
    "passwd", "secret", "token", "example", "placeholder", "redacted", "hidden", "dummy", "test", "testing",
    "todo", "fixme", "required", "optional", "string", "str", "bytes", "int", "env", "default", "empty",
    "your_password", "yourpassword", "your-password", "mypassword", "my_password", "notsecret", "not-a-secret",
    "pass", "pw", "pwd", "user", "username", "repo",
})
PLACEHOLDER_WORDS = ("example", "your_", "your-", "changeme", "placeholder", "dummy", "fake", "sample",
                     "redacted", "xxxx", "****", "...")
# In code and prose (not settings files), a value naming itself a secret is an illustration: `password1`.
ILLUSTRATION_WORDS = ("password", "secret")
REFERENCE_MARKS = ("${", "{{", "%(", "%s", "<", ">", "{", "}", "(", ")", "[", "]", "|", " ", "\\", "`")


@dataclass(frozen=True, slots=True)
class SecretMatch:
    """What made a file look like it holds credentials: the rule's name and, for content, the line."""

    rule: str
    line: int | None = None  # 1-based; None when the file name matched

    def describe(self) -> str:
        return f"{self.rule} on line {self.line}" if self.line is not None else f"{self.rule} (by its name)"


@dataclass(frozen=True, slots=True)
class ContentRule:
    """One content rule: the regex runs only when one of `keywords` is in the text (case-folded when
    `ignore_case`), and only when every string of `requires` is too; `check` vets the captured value."""

    name: str
    pattern: re.Pattern[str]
    keywords: tuple[str, ...]
    requires: tuple[str, ...] = ()
    ignore_case: bool = False
    check: str = ""  # "" none; "config": a settings value; "code": a literal in code; "url": a URL password


def _rule(name: str, regex: str, keywords: tuple[str, ...], requires: tuple[str, ...] = (),
          flags: int = 0, check: str = "") -> ContentRule:
    return ContentRule(name, re.compile(regex, flags | re.MULTILINE), keywords, requires,
                       bool(flags & re.IGNORECASE), check)


_B64 = r"[A-Za-z0-9+/=]"
# The quote and bracket after a key (`"password":`, `config["SECRET_KEY"] =`), then the assignment
# (Python, shell, YAML, TOML, Ruby, Go).
_ASSIGN = r"[\"']?\]?[ \t]{0,8}(?::=|=>|=|:)[ \t]{0,8}"
_VALUE = r"(?P<value>\"[^\"\n]{0,200}\"|'[^'\n]{0,200}'|[^\s\"'#;,]{1,200})"
_KEYWORDS = (r"(?P<key>password|passwd|secret|token|(?:api|access|secret|private|signing|encryption|master|auth)"
             r"[_-]?key|apikey|client[_-]?secret|credentials?)")

CONTENT_RULES = (
    _rule("private key", r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----[\s\S]{0,400}?" + _B64 + "{40}",
          ("PRIVATE KEY",)),
    _rule("AWS access key", r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}(?![A-Za-z0-9])",
          ("AKIA", "ASIA", "ABIA", "ACCA", "A3T")),
    _rule("AWS secret key", r"aws_secret_access_key[\"']?[ \t]*[:=][ \t]*[\"']?[A-Za-z0-9/+]{40}",
          ("aws_secret_access_key",), flags=re.IGNORECASE),
    _rule("GitHub token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{50,255})\b",
          ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    _rule("GitLab token", r"\bglpat-[A-Za-z0-9_-]{20,}", ("glpat-",)),
    _rule("Slack token", r"\bxox[abposr]-[A-Za-z0-9-]{10,200}", ("xox",)),
    _rule("Slack webhook", r"hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{16,}",
          ("hooks.slack.com",)),
    _rule("Google API key", r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])", ("AIza",)),
    _rule("Stripe key", r"\b(?:sk|rk)_live_[0-9A-Za-z]{20,}", ("_live_",)),
    _rule("OpenAI key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}T3BlbkFJ[A-Za-z0-9_-]{20,}",
          ("T3BlbkFJ",)),
    _rule("Anthropic key", r"\bsk-ant-[a-z]{3,6}\d\d-[A-Za-z0-9_-]{80,}", ("sk-ant-",)),
    _rule("Hugging Face token", r"\bhf_[A-Za-z]{34}\b", ("hf_",)),
    _rule("npm token", r"\bnpm_[A-Za-z0-9]{36}\b", ("npm_",)),
    _rule("PyPI token", r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}", ("pypi-AgEI",)),
    _rule("SendGrid key", r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\b", ("SG.",)),
    _rule("JSON web token", r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}", ("eyJ",)),
    _rule("service-account key", r"\"private_key\"[ \t]*:[ \t]*\"-----BEGIN", ("\"private_key\"",),
          requires=("client_email",)),
    _rule("kubeconfig credentials", r"^[ \t]*(?:client-key-data|token|password)[ \t]*:[ \t]*[\"']?[A-Za-z0-9._~+/=-]{16,}",
          ("client-key-data", "token:", "password:"), requires=("clusters:", "users:")),
    _rule("password in a URL", r"\b[a-z][a-z0-9+.-]{1,15}://[^\s:/@\"'<>{}]{1,64}:(?P<value>[^\s/@\"'<>{}]{3,128})@"
          r"[A-Za-z0-9.-]+", ("://",), check="url"),
    _rule("credential export", r"^[ \t]*(?:export[ \t]+)?[A-Z][A-Z0-9_]{0,60}_(?:KEY|TOKEN|SECRET|PASSWORD|PASS|PWD|"
          r"CREDENTIALS?)[ \t]*=[ \t]*" + _VALUE, ("_KEY", "_TOKEN", "_SECRET", "_PASS", "_PWD", "_CREDENTIAL"),
          check="config"),
    _rule("literal password or key", r"(?<![A-Za-z0-9])" + _KEYWORDS + "(?![A-Za-z0-9_])" + _ASSIGN + _VALUE,
          ("pass", "secret", "token", "key", "credential"), flags=re.IGNORECASE, check="assign"),
)


def match_name(rel: str) -> SecretMatch | None:
    """The name rule `rel` (a POSIX path) matches, or None."""
    pure = PurePosixPath(rel)
    name = pure.name
    if name.endswith((".example", ".sample", ".template", ".dist")):
        return None
    if len(pure.parts) >= 2:
        for parent, file_name, what in PATH_RULES:
            if pure.parts[-2] == parent and name == file_name:
                return SecretMatch(what)
    if pure.suffix.lower() in NAME_RULE_CODE_SUFFIXES:
        return None
    for pattern, what in NAME_RULES:
        if fnmatch.fnmatchcase(name, pattern):
            return SecretMatch(what)
    return None


def scan_text(rel: str, text: str) -> SecretMatch | None:
    """The first credential found in `text` (the file `rel`), or None. Linear in the text."""
    text = text[:MAX_SCAN_CHARS]
    folded = None
    config = _is_config(rel)
    first: SecretMatch | None = None
    first_offset = len(text)
    for rule in CONTENT_RULES:
        if rule.ignore_case:
            folded = text.lower() if folded is None else folded
            haystack, keywords = folded, tuple(k.lower() for k in rule.keywords)
        else:
            haystack, keywords = text, rule.keywords
        if not any(k in haystack for k in keywords) or not all(r in text for r in rule.requires):
            continue
        for found in rule.pattern.finditer(text, 0, first_offset):  # only a match earlier than the first
            if _value_counts(rule.check, found, config):
                first_offset = found.start()
                first = SecretMatch(_rule_name(rule, found), text.count("\n", 0, first_offset) + 1)
                break
    return first


def _rule_name(rule: ContentRule, found: re.Match[str]) -> str:
    if rule.check == "assign":
        return f"literal {found['key'].lower().replace('-', '_')}"
    return rule.name


def _is_config(rel: str) -> bool:
    pure = PurePosixPath(rel)
    return pure.suffix.lower() in CONFIG_SUFFIXES or pure.name.startswith((".env", "env."))


def _value_counts(check: str, found: re.Match[str], config: bool) -> bool:
    """Whether the captured value looks like a real credential rather than code, a reference or a placeholder."""
    if not check:
        return True
    if check == "config" and not config:
        return False  # `CUSTOM_KEY = "custom"` in code is a constant naming a key
    raw = found["value"]
    quoted = raw[:1] in ("'", '"')
    value = raw[1:-1] if quoted and len(raw) >= 2 and raw[-1] == raw[0] else raw
    if not config and any(word in value.lower() for word in ILLUSTRATION_WORDS):
        return False
    if check == "url":
        return _real_value(value, MIN_CONFIG_VALUE if config else MIN_CODE_VALUE)
    if check == "assign" and found["key"].lower().replace("-", "_") in value.lower().replace("-", "_"):
        return False  # `ACCESS_TOKEN_HEADER = "X-Access-Token"` names the secret
    if check == "assign" and not config:
        # code: only a string literal, and a longer one (`token = request.headers["X"]` is no secret)
        return quoted and _real_value(value, MIN_CODE_VALUE) and not _looks_like_name(value)
    if not quoted and not _starts_line(found):
        return False  # prose: `73 ms/token: hundreds of launches`
    return _real_value(value, MIN_CONFIG_VALUE) and not _looks_like_name(value)


def _starts_line(found: re.Match[str]) -> bool:
    """Whether the key begins its line, as a settings key does (after indentation, `export` or a quote)."""
    text = found.string
    start = text.rfind("\n", 0, found.start()) + 1
    return re.fullmatch(r"[ \t]*(?:export[ \t]+)?[\"']?[A-Za-z0-9_.-]*", text[start:found.start()]) is not None


def _real_value(value: str, min_len: int) -> bool:
    lowered = value.lower()
    if len(value) < min_len or lowered in PLACEHOLDERS or value.startswith(("$", "!", "&", "*", "/", "./", "~/")):
        return False
    if any(mark in value for mark in REFERENCE_MARKS) or any(word in lowered for word in PLACEHOLDER_WORDS):
        return False
    if not value.isascii() or len(set(value)) <= 2:  # `xxxxxxxx`, `00000000`, `--------`
        return False
    return not value.replace(".", "").isdigit()  # a number (a port, a count, a version)


def _looks_like_name(value: str) -> bool:
    """An identifier, dotted name or env-var name (`DB_PASSWORD`, `settings.secret_key`, `created_at`),
    which names a secret rather than being one."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(?:[.-][A-Za-z_][A-Za-z0-9_]*)*", value) is None:
        return False
    letters = value.replace("_", "").replace(".", "").replace("-", "")
    if not letters.isalpha():
        return False  # `hunter2`: digits mixed in
    return "_" in value or "." in value or value.isupper() or value.islower() and "-" in value
