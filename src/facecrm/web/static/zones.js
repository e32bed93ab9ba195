// Zone editor: ask the store's agent for one snapshot, click polygons on it, save them.
// Coordinates are normalised (0..1 of the picture), as the store config API wants them.
"use strict";
(() => {
  const editor = document.getElementById("zone-editor");
  if (!editor) return;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const base = `/console/stores/${encodeURIComponent(editor.dataset.store)}/zones`;
  const maxPoints = Number(editor.dataset.maxPoints);
  const all = JSON.parse(editor.dataset.zones || "{}"); // camera -> [{name, points}]
  const camera = document.getElementById("zone-camera");
  const state = document.getElementById("snapshot-state");
  const img = document.getElementById("snapshot");
  const svg = document.getElementById("zone-svg");
  const list = document.getElementById("zone-list");
  const error = document.getElementById("zone-error");
  const saved = document.getElementById("zone-saved");
  const kind = document.getElementById("zone-kind");
  const till = document.getElementById("zone-till");
  const NS = "http://www.w3.org/2000/svg";
  let current = []; // the polygon being drawn: [[x, y], ...]

  const zones = () => all[camera.value] || (all[camera.value] = []);
  const say = (el, text) => { el.textContent = text; };
  const problem = async (r) => {
    const body = await r.json().catch(() => ({}));
    return body.reason ? `${body.reason}: ${body.detail || ""}` : body.detail || `refused (${r.status})`;
  };

  function draw() {
    svg.replaceChildren();
    for (const z of zones()) {
      const p = document.createElementNS(NS, "polygon");
      p.setAttribute("points", z.points.map((q) => q.join(",")).join(" "));
      p.dataset.zone = z.name;
      svg.append(p);
    }
    if (current.length) {
      const line = document.createElementNS(NS, "polyline");
      line.setAttribute("points", current.map((q) => q.join(",")).join(" "));
      svg.append(line);
      for (const [x, y] of current) {
        const c = document.createElementNS(NS, "circle");
        c.setAttribute("cx", x); c.setAttribute("cy", y); c.setAttribute("r", "0.008");
        svg.append(c);
      }
    }
    list.replaceChildren();
    zones().forEach((z, i) => {
      const li = document.createElement("li");
      li.dataset.zone = z.name;
      li.textContent = `${z.name} (${z.points.length} points) `;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.addEventListener("click", () => { zones().splice(i, 1); draw(); });
      li.append(remove);
      list.append(li);
    });
  }

  svg.addEventListener("click", (e) => {
    const box = svg.getBoundingClientRect();
    const round = (v) => Math.round(Math.min(1, Math.max(0, v)) * 10000) / 10000;
    if (current.length >= maxPoints) { say(error, `at most ${maxPoints} points`); return; }
    current.push([round((e.clientX - box.left) / box.width), round((e.clientY - box.top) / box.height)]);
    draw();
  });
  document.getElementById("zone-undo").addEventListener("click", () => { current.pop(); draw(); });
  document.getElementById("zone-close").addEventListener("click", () => {
    if (current.length < 3) { say(error, "a zone needs at least 3 points"); return; }
    const name = kind.value === "checkout_queue" ? `checkout_queue:${till.value}` : kind.value;
    zones().push({ name, points: current });
    current = [];
    say(error, "");
    draw();
  });
  camera.addEventListener("change", () => { current = []; img.removeAttribute("src"); draw(); });

  document.getElementById("zone-save").addEventListener("click", async () => {
    say(error, ""); say(saved, "");
    const r = await fetch(base, {
      method: "POST", credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json" },
      body: JSON.stringify({ camera: camera.value, zones: zones() }),
    });
    if (!r.ok) { say(error, await problem(r)); return; }
    const body = await r.json();
    all[camera.value] = body.zones;
    say(saved, `saved: ${body.zones.map((z) => z.name).join(", ") || "no zones"}`);
    draw();
  });

  document.getElementById("snapshot-ask").addEventListener("click", async () => {
    const cam = camera.value;
    say(error, "");
    const r = await fetch(`${base}/snapshot`, {
      method: "POST", credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json" },
      body: JSON.stringify({ camera: cam }),
    });
    if (!r.ok) { say(error, await problem(r)); return; }
    say(state, "waiting for the agent…");
    const query = `camera=${encodeURIComponent(cam)}`;
    for (let i = 0; i < 60; i++) {
      await new Promise((done) => setTimeout(done, 500));
      const s = await fetch(`${base}/snapshot/status?${query}`, { credentials: "same-origin" });
      if (!s.ok) { say(error, await problem(s)); return; }
      const { status } = await s.json();
      if (status === "ready") {
        img.addEventListener("load", () => say(state, "snapshot shown (not stored)"), { once: true });
        img.src = `${base}/snapshot?${query}&t=${Date.now()}`; // read once: then discarded
        return;
      }
      if (status === "none") break;
    }
    say(state, "no snapshot arrived: is the store's agent running?");
  });
  draw();
})();
