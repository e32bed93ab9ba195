// Live alerts over server-sent events; claim and acknowledge with the CSRF token.
"use strict";
(() => {
  const list = document.getElementById("alerts");
  const state = document.getElementById("stream-state");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  function wire(item) {
    const id = item.dataset.id;
    const act = async (action) => {
      const r = await fetch(`/console/alerts/${id}/${action}`, {
        method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin",
      });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) { item.querySelector(".state").textContent = body.detail || "failed"; return; }
      item.querySelector(".state").textContent = action === "claim" ? "claimed by you" :
        `greeted after ${body.time_to_greet_s}s`;
      item.querySelector(".claim").disabled = true;
      if (action === "ack") item.classList.add("done");
    };
    item.querySelector(".claim").addEventListener("click", () => act("claim"));
    item.querySelector(".ack").addEventListener("click", () => act("ack"));
  }
  list.querySelectorAll("li.alert").forEach(wire);

  const source = new EventSource("/console/alerts/stream");
  source.onopen = () => { state.textContent = "Live."; };
  source.onerror = () => { state.textContent = "Reconnecting…"; };
  source.addEventListener("alert", (event) => {
    const a = JSON.parse(event.data);
    const item = document.getElementById("alert-template").content.firstElementChild.cloneNode(true);
    item.dataset.id = a.id;
    item.querySelector(".message").textContent = a.message;
    item.querySelector(".time").textContent = a.created_at.slice(11, 19);
    item.querySelector(".card-link").href = `/console/customers/${a.customer_id}`;
    list.prepend(item);
    wire(item);
  });
  source.addEventListener("claimed", (event) => {
    const a = JSON.parse(event.data);
    const item = list.querySelector(`li[data-id="${a.id}"]`);
    if (item && !item.querySelector(".claim").disabled) {
      item.querySelector(".state").textContent = "claimed";
      item.querySelector(".claim").disabled = true;
    }
  });
})();
