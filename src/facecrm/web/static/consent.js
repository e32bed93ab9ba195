// The consent text in the chosen language, shared by every enrollment page (console, kiosk,
// the customer's own phone): every active translation is in the page, one is shown, and the
// hidden `text-id` field names the exact text version the customer saw (the consent record
// points at it).
"use strict";
function wireConsentLanguage() {
  const language = document.getElementById("language");
  const textId = document.getElementById("text-id");
  const show = () => {
    const wanted = language ? language.value : null;
    for (const text of document.querySelectorAll(".consent-text")) {
      const shown = wanted === null || text.dataset.language === wanted;
      text.hidden = !shown;
      if (shown) textId.value = text.dataset.textId;
    }
    if (wanted) document.documentElement.lang = wanted;
  };
  if (language) language.addEventListener("change", show);
  show();
  return show; // a form reset (the kiosk) shows the default language's text again
}
