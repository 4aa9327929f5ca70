"""A job's worth of PyGithub, unchanged, with base_url = the daemon's /gh base.

Run by tests/clients.rs; prints one JSON object with what each step saw.
"""

import json
import os

from github import Auth, Github

g = Github(
    auth=Auth.Token(os.environ["TOKEN"]),
    base_url=os.environ["BASE_URL"],
    per_page=2,
    retry=None,
)
out = {}

# 1. The repository.
repo = g.get_repo(os.environ["REPOSITORY"])
out["repo_url"] = repo.url

# 2. Its issues, every page (PyGithub builds the requests from the fetched object).
out["issue_titles"] = [issue.title for issue in repo.get_issues(state="all")]

# 3. A new issue, 4. read back.
created = repo.create_issue(title="from PyGithub")
out["read_back_title"] = repo.get_issue(created.number).title

# 5. A conditional request with the ETag it was given: update() is False on a 304.
out["changed_since"] = repo.update()

# 6. The rate-limit figures of an answer from the cache.
g.get_repo(os.environ["REPOSITORY"])
out["rate_limiting"] = list(g.rate_limiting)

print(json.dumps(out))
