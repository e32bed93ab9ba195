// Live alerts over server-sent events; claim, greet, dismiss or dispute with the CSRF token.
// Also wires the buttons of the history page (no live stream there).
"use strict";
(() => {
  const list = document.getElementById("alerts") || document.getElementById("history");
  const state = document.getElementById("stream-state");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const DONE = { claim: "claimed by you", dismiss: "dismissed", dispute: "not this person: disputed" };

  function close(item) {
    item.classList.add("done");
    item.querySelectorAll("button.claim, button.ack, button.dismiss").forEach((b) => b.remove());
  }

  function wire(item) {
    const id = item.dataset.id;
    const act = async (action, button) => {
      if (action === "dispute" &&
          !window.confirm("Not this person? The visit is taken out of the customer's history.")) return;
      button.disabled = true;
      const r = await fetch(`/console/alerts/${id}/${action}`, {
        method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin",
      });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) {
        item.querySelector(".state").textContent = body.detail || "failed";
        button.disabled = false;
        return;
      }
      item.querySelector(".state").textContent = DONE[action] || `greeted after ${body.time_to_greet_s}s`;
      const claim = item.querySelector(".claim");
      if (claim) claim.disabled = true;
      if (action !== "claim") close(item);
      if (action === "dispute") button.remove();
    };
    for (const action of ["claim", "ack", "dismiss", "dispute"]) {
      const button = item.querySelector(`button.${action}`);
      if (button) button.addEventListener("click", () => act(action, button));
    }
  }
  list.querySelectorAll("li.alert").forEach(wire);
  if (!state) return; // the history page: no live stream

  function render(a) {
    const item = document.getElementById("alert-template").content.firstElementChild.cloneNode(true);
    item.dataset.id = a.id;
    item.querySelector(".message").textContent = a.message;
    const reasons = item.querySelector(".reasons");
    for (const reason of a.reasons || []) {
      const li = document.createElement("li");
      li.textContent = reason;
      reasons.append(li);
    }
    const time = (a.local_time || a.created_at).slice(11, 16);
    item.querySelector(".where").textContent = (a.camera ? a.camera + " · " : "") + time + " " + a.time_zone;
    const link = item.querySelector(".card-link");
    if (a.customer_id) {
      link.href = `/console/customers/${a.customer_id}`;
      if (a.has_photo) {
        const face = item.querySelector(".face");
        face.src = `/console/customers/${a.customer_id}/photo`;
        face.alt = "Enrollment photo of " + (a.customer_name || "the customer");
        face.hidden = false;
      }
    } else {
      link.remove();
      item.querySelector(".dispute").remove();
    }
    return item;
  }

  const source = new EventSource("/console/alerts/stream");
  source.onopen = () => { state.textContent = "Live."; };
  source.onerror = () => { state.textContent = "Reconnecting…"; };
  source.addEventListener("alert", (event) => {
    const item = render(JSON.parse(event.data));
    list.prepend(item);
    wire(item);
  });
  source.addEventListener("claimed", (event) => {
    const a = JSON.parse(event.data);
    const item = list.querySelector(`li[data-id="${a.id}"]`);
    const claim = item && item.querySelector(".claim");
    if (claim && !claim.disabled) {
      item.querySelector(".state").textContent = "claimed";
      claim.disabled = true;
    }
  });
  source.addEventListener("closed", (event) => {
    // another console dismissed or disputed it: it leaves the live list
    const a = JSON.parse(event.data);
    const item = list.querySelector(`li[data-id="${a.id}"]`);
    if (item && !item.classList.contains("done")) {
      item.querySelector(".state").textContent = a.outcome;
      close(item);
    }
  });
})();
