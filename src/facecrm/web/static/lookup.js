// Phone look-up: one photo, then the opted-in customer's card or nothing.
"use strict";
(() => {
  const shot = document.getElementById("shot");
  const answer = document.getElementById("answer");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  shot.addEventListener("change", async () => {
    if (!shot.files.length) return;
    const data = new FormData();
    data.append("image", shot.files[0]);
    answer.textContent = "Looking…";
    const r = await fetch("/console/lookup", {
      method: "POST", body: data, headers: { "X-CSRF-Token": csrf }, credentials: "same-origin",
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) { answer.textContent = body.detail || "Something went wrong."; return; }
    if (!body.found) { answer.textContent = body.message; return; }
    const c = body.card;
    answer.innerHTML = "";
    const link = document.createElement("a");
    link.href = body.url;
    link.textContent = (c.preferred_name || c.name) + " (" + c.tier + ")";
    answer.append(link);
    const wanted = c.open_interests.map((i) => i.product).join(", ");
    if (wanted) answer.append(document.createTextNode(" · wanted: " + wanted));
  });
})();
