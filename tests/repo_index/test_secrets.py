"""Issue 22: credentials stay out of the context, found by name and by content; code that only talks
about passwords and tokens stays in.

The planted values are assembled at run time, so this file itself holds nothing a scanner would flag.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from v4.repo_index import DiscoveryConfig, IndexConfig, RepoIndex
from v4.repo_index.secrets import match_name, scan_text
from tests.conftest import make_repo

ALNUM = "Q7x2Kp9LmZ4vR8tW3nB6yH1cJ5dF0gS"


def _chars(count: int, alphabet: str = ALNUM) -> str:
    return (alphabet * (count // len(alphabet) + 1))[:count]


def _pem(kind: str = "RSA ") -> str:
    body = "\n".join(_chars(64, "MIIEpAIBAAKCAQEA3x" + ALNUM) for _ in range(4))
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----\n"


AWS_KEY = "AKIA" + "J7Q2M4XK9WZT5R8B"
AWS_SECRET = _chars(40, "wJalrXUtnFEMIK7MDENGbPxRfiCY" + ALNUM)
GITHUB = "ghp_" + _chars(36)
SLACK = "xoxb-" + "2291840392-" + _chars(24)
GOOGLE = "AIza" + _chars(35)
STRIPE = "sk_" + "live_" + _chars(24)
GITLAB = "glpat-" + _chars(20)
ANTHROPIC = "sk-ant-" + "api03-" + _chars(93)
OPENAI = "sk-proj-" + _chars(24) + "T3Blbk" + "FJ" + _chars(24)
HF = "hf_" + _chars(34, "abcdefghijKLMNOPqrstuvwxyzABCDEFGH")
NPM = "npm_" + _chars(36)
SENDGRID = "SG." + _chars(22) + "." + _chars(43)
JWT = "eyJ" + "hbGciOiJIUzI1NiJ9" + ".eyJ" + "zdWIiOiIxMjM0NTY3ODkwIn0" + "." + _chars(32)
DB_PASSWORD = "Tr0ub4" + "dor&3x"
INI_PASSWORD = "hunter" + "22"
URL_PASSWORD = "v9Xq2L" + "mN7pKt"
ENV_TOKEN = _chars(32)
SECRET_KEY = _chars(40, "9f8a7b6c5d4e3f2a1b0c")
KUBE_TOKEN = _chars(48)
PEM = _pem()
PEM_SA = _pem("").replace("\n", "\\n")
KUBE_KEY = _chars(64, "LS0tLS1CRUdJTiBSU0Eg" + ALNUM)
WEBHOOK = "https://hooks.slack.com/services/T0" + "4F9XK2QZ/B07HDMA1B2C/" + _chars(24)

# path -> (text, the secret that must not reach the context)
PLANTED = {
    "config.py": (f'REGION = "eu-west-1"\n\nAWS_ACCESS_KEY_ID = "{AWS_KEY}"\n', AWS_KEY),
    "deploy/notes.md": (f"# Deploying\n\nThe deploy key:\n\n```\n{PEM}```\n", PEM.splitlines()[1]),
    "settings.ini": (f"[db]\nhost = localhost\npassword={INI_PASSWORD}\n", INI_PASSWORD),
    ".aws/credentials": (f"[default]\naws_access_key_id = {AWS_KEY}\naws_secret_access_key = {AWS_SECRET}\n",
                         AWS_SECRET),
    ".git-credentials": (f"https://alice:{GITHUB}@github.com\n", GITHUB),
    ".envrc": (f"export DATABASE_TOKEN={ENV_TOKEN}\n", ENV_TOKEN),
    "kube/config": ("apiVersion: v1\nkind: Config\nclusters:\n- name: prod\nusers:\n- name: admin\n  user:\n"
                    f"    client-key-data: {KUBE_KEY}\n    token: {KUBE_TOKEN}\n", KUBE_KEY),
    "sa.json": (json.dumps({"type": "service_account", "project_id": "demo", "private_key_id": "abc",
                            "private_key": _pem(""), "client_email": "ci@demo.iam.gserviceaccount.com"}, indent=1),
                _chars(64, "MIIEpAIBAAKCAQEA3x" + ALNUM)),
    ".env": (f"DEBUG=1\nSTRIPE_KEY={STRIPE}\n", STRIPE),
    "ci/tokens.yaml": (f"notify:\n  channel: builds\n  slack_token: {SLACK}\n", SLACK),
    "app/github_client.py": (f'import requests\n\nGITHUB_TOKEN = "{GITHUB}"\n', GITHUB),
    "web/maps.js": (f'const MAPS = {{ key: "{GOOGLE}" }};\nexport default MAPS;\n', GOOGLE),
    "src/billing.rb": (f'Stripe.api_key = "{STRIPE}"\n', STRIPE),
    "src/db.go": (f'package db\n\nconst dsn = "postgres://app:{URL_PASSWORD}@db.internal:5432/app"\n', URL_PASSWORD),
    "docs/setup.md": (f"Set the key:\n\n    export OPENAI_API_KEY={OPENAI}\n", OPENAI),
    "scripts/push.sh": (f"#!/bin/sh\nHF_TOKEN={HF} huggingface-cli upload .\n", HF),
    "tests/fixtures/session.txt": (f"Authorization: Bearer {JWT}\n", JWT),
    ".yarnrc.yml": (f'npmAuthToken: "{NPM}"\n', NPM),
    "server/app.py": (f'from flask import Flask\n\napp = Flask(__name__)\napp.config["SECRET_KEY"] = "{SECRET_KEY}"\n',
                      SECRET_KEY),
    "config/database.yml": (f"production:\n  adapter: postgresql\n  password: {DB_PASSWORD}\n", DB_PASSWORD),
    "ci/gitlab.toml": (f'[runner]\ntoken = "{GITLAB}"\n', GITLAB),
    "agent/llm.py": (f'import anthropic\n\nclient = anthropic.Anthropic(api_key="{ANTHROPIC}")\n', ANTHROPIC),
    "deploy/aws.cfg": (f"[prod]\naws_secret_access_key={AWS_SECRET}\n", AWS_SECRET),
    "keys/deploy_key": (_pem("OPENSSH "), _pem("OPENSSH ").splitlines()[1]),
    "notify.py": (f'WEBHOOK = "{WEBHOOK}"\n', WEBHOOK),
    "mail/send.ts": (f'const client = new Mail("{SENDGRID}");\n', SENDGRID),
    "src/main/resources/app.properties": (f"db.url=jdbc:postgresql://db/app\ndb.password={DB_PASSWORD}\n",
                                          DB_PASSWORD),
    ".docker/config.json": ('{"auths": {"registry.example.com": {"auth": "' + _chars(28) + '"}}}\n', _chars(28)),
    "terraform.tfvars": (f'db_password = "{DB_PASSWORD}"\n', DB_PASSWORD),
}

# Ordinary code that talks about credentials without holding any: it must stay in the context.
INNOCENT = {
    "auth.py": (
        "import getpass\nimport os\n\n\n"
        "def check_password(password: str) -> bool:\n    return hash_password(password) == STORED\n\n\n"
        "def login(request) -> str:\n    token = request.headers[\"X-Token\"]\n"
        "    api_key = os.environ[\"API_KEY\"]\n    password = getpass.getpass()\n"
        "    secret = load_secret(name=\"db\")\n    return token + api_key + password + secret\n\n\n"
        "PASSWORD_FIELD = \"password\"\nTOKEN_HEADER = \"X-Auth-Token\"\nSECRET_KEY_ENV = \"SECRET_KEY\"\n"
        "MAX_TOKENS = 4096\nbos_token = \"<s>\"\n"
    ),
    "client.ts": "export function auth(token: string, apiKey: string) {\n  const password = prompt('password?');\n"
                 "  return fetch(url, { headers: { Authorization: `Bearer ${token}` } });\n}\n",
    "settings.py": "SECRET_KEY = os.environ.get(\"DJANGO_SECRET_KEY\")\nPASSWORD_HASHERS = [\"argon2\"]\n",
    "deploy.yaml": "env:\n  - name: DB_PASSWORD\n    valueFrom:\n      secretKeyRef:\n        key: password\n"
                   "  password: ${DB_PASSWORD}\n  token: \"{{ vault_token }}\"\n",
    ".env.example": "API_KEY=\nSECRET=changeme\n",
    "README.md": "Pass the key with `--api-key` or set `password=<your password>` in settings.ini.\n"
                 "Tokens: the model reads 73 ms/token: hundreds of launches.\n",
    "config.ini": "[db]\npassword = %(DB_PASSWORD)s\nuser = app\n",
    "crypto.py": "PEM_HEADER = \"-----BEGIN RSA PRIVATE KEY-----\"\n\n\ndef is_pem(text: str) -> bool:\n"
                 "    return text.startswith(PEM_HEADER)\n",
}


def _plan(root: Path, tokenizer, include_secrets: bool = False):
    config = IndexConfig(discovery=DiscoveryConfig(include_secrets=include_secrets), use_cache=False)
    return RepoIndex(root, tokenizer=tokenizer, config=config).plan()


def test_planted_secrets_never_reach_the_plan(tmp_path: Path, tokenizer) -> None:
    root = make_repo(tmp_path / "repo", {p: text for p, (text, _) in PLANTED.items()} | INNOCENT)
    plan = _plan(root, tokenizer)
    context = "".join(s.text for s in plan.segments)
    document = json.dumps(plan.to_json())
    reasons = {s.path: s.reason for s in plan.skipped}
    leaked = [p for p, (_, secret) in PLANTED.items() if secret in context]
    assert leaked == [], f"{len(leaked)} of {len(PLANTED)} planted secrets reached the context"
    assert sorted(p for p in PLANTED if p not in reasons) == []
    for path, (_, secret) in PLANTED.items():
        assert reasons[path].startswith("secret: ") and reasons[path].endswith("(opt in with --include-secrets)")
        assert secret not in reasons[path] and secret not in document, path
    assert sorted(s.path for s in plan.segments) == sorted(INNOCENT)


def test_skip_reason_names_the_rule_and_line(tmp_path: Path, tokenizer) -> None:
    root = make_repo(tmp_path / "repo", {p: PLANTED[p][0] for p in ("config.py", "settings.ini", ".aws/credentials")})
    reasons = {s.path: s.reason for s in _plan(root, tokenizer).skipped}
    assert reasons["config.py"] == "secret: AWS access key on line 3 (opt in with --include-secrets)"
    assert reasons["settings.ini"] == "secret: literal password on line 3 (opt in with --include-secrets)"
    assert reasons[".aws/credentials"] == "secret: AWS credentials file (by its name) (opt in with --include-secrets)"


@pytest.mark.parametrize("path", sorted(INNOCENT))
def test_code_about_credentials_is_not_flagged(path: str) -> None:
    assert match_name(path) is None
    assert scan_text(path, INNOCENT[path]) is None


@pytest.mark.parametrize("path", sorted(PLANTED))
def test_each_planted_secret_is_recognised(path: str) -> None:
    assert match_name(path) or scan_text(path, PLANTED[path][0]), path


def test_include_secrets_keeps_them_and_the_plan_lists_them(tmp_path: Path, tokenizer) -> None:
    root = make_repo(tmp_path / "repo", {"config.py": PLANTED["config.py"][0], ".envrc": PLANTED[".envrc"][0],
                                         "auth.py": INNOCENT["auth.py"]})
    plan = _plan(root, tokenizer, include_secrets=True)
    assert sorted(s.path for s in plan.segments) == [".envrc", "auth.py", "config.py"]
    assert [(s.path, s.reason) for s in plan.secrets_sent] == [(".envrc", "direnv file (by its name)"),
                                                              ("config.py", "AWS access key on line 3")]
    assert plan.to_json()["secrets_included"][1] == {"path": "config.py", "reason": "AWS access key on line 3"}
    assert _plan(root, tokenizer).secrets_sent == []


def test_a_secret_added_later_is_dropped_on_update(tmp_path: Path, tokenizer) -> None:
    root = make_repo(tmp_path / "repo", {"config.py": "REGION = 'eu'\n", "main.py": "x = 1\n"})
    index = RepoIndex(root, tokenizer=tokenizer, config=IndexConfig(use_cache=False))
    assert "config.py" in [s.path for s in index.plan().segments]
    (root / "config.py").write_text(PLANTED["config.py"][0])
    index.update(["config.py"])
    plan = index.plan()
    assert [s.path for s in plan.segments] == ["main.py"]
    assert AWS_KEY not in "".join(s.text for s in plan.segments)
    (root / "config.py").write_text("REGION = 'eu'\n")
    index.update(["config.py"])
    assert "config.py" in [s.path for s in index.plan().segments]


@pytest.mark.parametrize("name,expected", [
    ("kubeconfig", "kubeconfig"), ("ops/kubeconfig-prod.yaml", "kubeconfig"), (".kube/config", "kubeconfig"),
    ("home/.aws/credentials", "AWS credentials file"), ("id_ed25519", "SSH key"), (".git-credentials",
                                                                                 "git credential store"),
    ("kubeconfig_test.go", None), (".envrc.example", None), ("docs/credentials.md", None), ("aws/credentials.py", None),
])
def test_name_rules(name: str, expected: str | None) -> None:
    found = match_name(name)
    assert (found.rule if found else None) == expected


def test_own_source_tree_has_no_flagged_files() -> None:
    """The content rules on this repository's own tracked files: a false-positive measure (issue 22)."""
    top = Path(__file__).resolve().parents[2]
    listed = subprocess.run(["git", "-C", str(top), "ls-files", "-z"], capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    flagged = []
    for rel in filter(None, listed.stdout.split("\0")):
        path = top / rel
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192] or len(data) > 1_000_000:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        found = match_name(rel) or scan_text(rel, text)
        if found:
            flagged.append(f"{rel}: {found.describe()}")
    assert flagged == []
