// The customer's own phone: self-enrollment (consent, selfie checked as it is chosen, a
// code to their e-mail or phone, then one POST with everything) and the sign-in to the
// personal page. The selfie leaves the phone only for the quality check and the last step.
"use strict";
(() => {
  const form = document.getElementById("self-enroll") || document.getElementById("self-signin");
  if (!form) return;
  const enrolling = form.id === "self-enroll";
  const base = "/self/" + encodeURIComponent(form.dataset.token);
  const contact = document.getElementById("contact");
  const code = document.getElementById("code");
  const sendButton = document.getElementById("send-code");
  const submit = document.getElementById("submit");
  const codeState = document.getElementById("code-state");
  const result = document.getElementById("result");
  let challenge = null;
  let selfieOk = !enrolling;

  async function problem(response) {
    const body = await response.json().catch(() => ({}));
    return (body.detail || response.statusText) + (body.reason ? " (" + body.reason + ")" : "");
  }

  function update() {
    sendButton.disabled = !contact.value.trim();
    const consent = enrolling ? document.getElementById("consent").checked : true;
    submit.disabled = !(challenge && /^[0-9]{6}$/.test(code.value.trim()) && selfieOk && consent);
  }
  form.addEventListener("input", update);
  form.addEventListener("change", update);

  if (enrolling) {
    wireConsentLanguage(); // consent.js

    const selfie = document.getElementById("selfie");
    const preview = document.getElementById("preview");
    const quality = document.getElementById("quality");
    selfie.addEventListener("change", async () => {
      selfieOk = false;
      update();
      if (!selfie.files.length) return;
      try { // drawn from the file itself: the page's policy allows no blob: images
        const bitmap = await createImageBitmap(selfie.files[0]);
        const scale = Math.min(1, 320 / bitmap.width);
        preview.width = bitmap.width * scale;
        preview.height = bitmap.height * scale;
        preview.getContext("2d").drawImage(bitmap, 0, 0, preview.width, preview.height);
        preview.hidden = false;
        bitmap.close();
      } catch (err) {
        preview.hidden = true;
      }
      quality.textContent = "Checking the photo…";
      quality.className = "muted";
      const data = new FormData();
      data.set("image", selfie.files[0]);
      const response = await fetch(base + "/check", { method: "POST", body: data });
      if (!response.ok) {
        quality.textContent = "Could not check the photo: " + await problem(response);
        quality.className = "error";
        return;
      }
      const body = await response.json();
      selfieOk = body.ok;
      quality.textContent = body.ok ? "Good photo." : "Please take another: " + body.message;
      quality.className = body.ok ? "ok" : "error";
      update();
    });
  }

  sendButton.addEventListener("click", async () => {
    const data = new FormData();
    data.set("contact", contact.value.trim());
    data.set("nonce", form.dataset.nonce);
    data.set("purpose", enrolling ? "enroll" : "signin");
    codeState.textContent = "Sending…";
    const response = await fetch(base + "/code", { method: "POST", body: data });
    if (!response.ok) {
      codeState.textContent = "No code sent: " + await problem(response);
      codeState.className = "error";
      return;
    }
    challenge = (await response.json()).challenge;
    codeState.textContent = "We sent a code to " + contact.value.trim() + ". It is valid for 10 minutes.";
    codeState.className = "ok";
    code.disabled = false;
    code.focus();
    update();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    data.set("challenge", challenge || "");
    data.set("nonce", form.dataset.nonce);
    submit.disabled = true;
    result.textContent = enrolling ? "Joining…" : "Checking…";
    result.className = "";
    const response = await fetch(base + (enrolling ? "/enroll" : "/signin"), {
      method: "POST", body: data, credentials: "same-origin",
    });
    if (!response.ok) {
      result.textContent = "Not done: " + await problem(response);
      result.className = "error";
      update();
      return;
    }
    window.location.assign((await response.json()).url);
  });
  update();
})();
