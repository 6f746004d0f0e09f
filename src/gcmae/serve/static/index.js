// The slide list of the job: thumbnail, tile count, status and prediction, each row links to its viewer.
"use strict";

function el(tag, props, children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children || []) node.append(child);
  return node;
}

function predictionText(p) {
  if (!p || !p.predicted) return "";
  const probs = Object.entries(p.probabilities || {}).map(([c, v]) => `${c} ${Number(v).toFixed(3)}`).join(", ");
  return `${p.predicted}` + (probs ? ` (${probs})` : "");
}

async function main() {
  const message = document.getElementById("message");
  const response = await fetch("/api/slides");
  if (!response.ok) { message.textContent = `cannot read the job: ${response.status}`; return; }
  const job = await response.json();
  document.getElementById("job").textContent = job.job;
  document.title = `gcmae serve: ${job.job}`;
  if (!job.slides.length) { message.textContent = "No slides in this job yet."; return; }
  message.textContent = `${job.slides.length} slide(s)`;
  const body = document.querySelector("#slides tbody");
  for (const s of job.slides) {
    const href = `/slide/${encodeURIComponent(s.id)}`;
    const thumb = s.thumbnail
      ? el("a", { href }, [el("img", { src: `/api/slides/${encodeURIComponent(s.id)}/thumbnail.png`, alt: s.id })])
      : "";
    const name = s.num_tiles !== null ? el("a", { href, textContent: s.id }) : s.id;
    const status = el("td", {}, s.status.map((t) => el("span", { className: `status ${t}`, textContent: t })));
    if (s.reason) status.append(el("div", { className: "reason", textContent: s.reason }));
    body.append(el("tr", { className: "slide-row" }, [
      el("td", {}, [thumb]), el("td", {}, [name]),
      el("td", { textContent: s.num_tiles === null ? "" : String(s.num_tiles) }), status,
      el("td", { textContent: predictionText(s.prediction) })]));
  }
  document.getElementById("slides").hidden = false;
}

main().catch((err) => { document.getElementById("message").textContent = `error: ${err}`; });
