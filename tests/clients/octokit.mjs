// A job's worth of octokit (@octokit/rest), unchanged, with baseUrl = the daemon's /gh base.
// Run by tests/clients.rs; prints one JSON object with what each step saw.
import { Octokit } from "@octokit/rest";

const [owner, repo] = process.env.REPOSITORY.split("/");
const octokit = new Octokit({ baseUrl: process.env.BASE_URL, auth: process.env.TOKEN });
const out = {};

// 1. The repository.
const got = await octokit.rest.repos.get({ owner, repo });
out.repo_url = got.data.url;
out.repo_source = got.headers["x-peercache-source"];

// 2. Its issues, every page, from the fetched object's own URL.
const issues = await octokit.paginate(`GET ${got.data.url}/issues`, { state: "all", per_page: 2 });
out.issue_titles = issues.map((i) => i.title);

// 3. A new issue, 4. read back from the URL it came with.
const created = await octokit.rest.issues.create({ owner, repo, title: "from octokit" });
out.created_status = created.status;
const back = await octokit.request(`GET ${created.data.url}`);
out.read_back_title = back.data.title;

// 5. A conditional request with the ETag it was given.
try {
  const again = await octokit.request(`GET ${got.data.url}`, {
    headers: { "if-none-match": got.headers.etag },
  });
  out.conditional_status = again.status;
} catch (error) {
  out.conditional_status = error.status;
}

// 6. x-ratelimit-remaining on an answer from the cache.
const cached = await octokit.rest.repos.get({ owner, repo });
out.cached_source = cached.headers["x-peercache-source"];
out.cached_remaining = cached.headers["x-ratelimit-remaining"];

process.stdout.write(JSON.stringify(out) + "\n");
