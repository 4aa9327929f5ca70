"""A job's worth of ghapi, unchanged, with gh_host = the daemon's /gh base.

Run by tests/clients.rs; prints one JSON object with what each step saw.
"""

import json
import os

from ghapi.all import GhApi, paged

owner, repo = os.environ["REPOSITORY"].split("/")
api = GhApi(gh_host=os.environ["BASE_URL"], token=os.environ["TOKEN"])
out = {}

# 1. The repository.
out["repo_url"] = api.repos.get(owner, repo).url

# 2. Its issues, every page.
titles = []
for page in paged(api.issues.list_for_repo, owner, repo, state="all", per_page=2):
    titles.extend(issue.title for issue in page)
out["issue_titles"] = titles

# 3. A new issue, 4. read back.
created = api.issues.create(owner, repo, title="from ghapi")
out["read_back_title"] = api.issues.get(owner, repo, created.number).title

# 5. The same repository again: from the cache, with the caller's rate-limit figures.
api.repos.get(owner, repo)
headers = {k.lower(): v for k, v in api.recv_hdrs.items()}
out["cached_source"] = headers.get("x-peercache-source")
out["cached_remaining"] = headers.get("x-ratelimit-remaining")

print(json.dumps(out))
