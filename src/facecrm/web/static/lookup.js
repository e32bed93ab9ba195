// Phone look-up: one photo, then the opted-in customer's card or nothing; "Not this person"
// disputes the answer (it feeds the store's report of disputed matches).
"use strict";
(() => {
  const shot = document.getElementById("shot");
  const answer = document.getElementById("answer");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  async function dispute(ref, button) {
    button.disabled = true;
    const r = await fetch("/console/lookup/dispute", {
      method: "POST", credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json" },
      body: JSON.stringify({ ref }),
    });
    const body = await r.json().catch(() => ({}));
    answer.textContent = r.ok ? "Noted: not this person. Thank you." : (body.detail || "Something went wrong.");
  }

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
    if (c.has_photo) {
      const img = document.createElement("img");
      img.className = "face";
      img.src = `/console/customers/${c.id}/photo`;
      img.alt = "Enrollment photo of " + c.name;
      answer.append(img);
    }
    const link = document.createElement("a");
    link.href = body.url;
    link.textContent = (c.preferred_name || c.name) + " (" + c.tier + ")";
    answer.append(link);
    const wanted = c.open_interests.map((i) => i.product).join(", ");
    if (wanted) answer.append(document.createTextNode(" · wanted: " + wanted));
    if (body.dispute_ref) {
      const button = document.createElement("button");
      button.type = "button";
      button.id = "not-this-person";
      button.textContent = "Not this person";
      button.addEventListener("click", () => dispute(body.dispute_ref, button));
      answer.append(document.createTextNode(" "), button);
    }
  });
})();
