/* The announcement box: a note for every participant's banner, and the notes shown now, each withdrawable. */

import { state } from "./state.js";
import { $, clock, el } from "./dom.js";
import { act, say } from "./controls.js";

export function renderAnnouncements() {
  const list = $("announcements");
  if (!list) return;
  list.replaceChildren(
    ...state.snap.announcements.map((note) =>
      el(
        "li",
        { dataset: { announcement: String(note.id) } },
        el("span", {}, note.message, el("span", { class: "reason" }, `shown since ${clock(note.created_at)}`)),
        el(
          "button",
          {
            type: "button",
            class: "button",
            title: "Take this note off every participant's banner",
            onclick: () => act({ action: "withdraw", announcement: note.id }),
          },
          "Withdraw",
        ),
      ),
    ),
  );
}

export function wireAnnouncements() {
  const text = $("announce-text");
  const left = () => {
    $("announce-left").textContent = `${text.maxLength - text.value.length} characters left`;
  };
  text.addEventListener("input", left);
  left();
  const send = async () => {
    if (!text.value.trim()) {
      say("error", "Write the announcement first.");
      text.focus();
      return;
    }
    const answer = await act({ action: "announce", message: text.value });
    if (answer && answer.ok) {
      text.value = "";
      left();
    }
  };
  $("announce-send").addEventListener("click", send);
  text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) send();
  });
}
