// The Broadcast page's formatting buttons: wrap the selected text of the message in a Telegram tag
// (a link asks for its address), then let htmx refresh the preview. Without JavaScript the owner
// types the tags; the buttons stay hidden.
(function () {
  "use strict";
  var tools = document.querySelector(".tg-tools");
  var text = document.getElementById("broadcast-text");
  if (!tools || !text) return;
  tools.hidden = false;
  tools.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-tag]");
    if (!button) return;
    var tag = button.getAttribute("data-tag");
    var start = text.selectionStart, end = text.selectionEnd;
    var open = "<" + tag + ">";
    if (tag === "a") {
      var address = window.prompt("Link address", "https://");
      if (!address || address === "https://") return;
      open = '<a href="' + address.trim().replace(/&/g, "&amp;").replace(/"/g, "&quot;") + '">';
    }
    var close = "</" + tag + ">";
    var chosen = text.value.slice(start, end);
    text.setRangeText(open + chosen + close, start, end, "end");
    if (!chosen) text.setSelectionRange(start + open.length, start + open.length);
    text.focus();
    text.dispatchEvent(new Event("input", { bubbles: true }));
  });
})();
