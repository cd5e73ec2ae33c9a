// The Catalog page: rows read first and changed in place, places put in order by hand.
//
// - A click anywhere on a row (not on its links or buttons) opens its form, as its Edit button
//   does; Escape in a form cancels it.
// - A form the server refuses comes back (400) with the reason: htmx is told to show it in place.
// - Places are dragged by their handle (pointer events: mouse, pen and touch alike) within their
//   own list, or moved with the arrow keys (Home and End too) while the handle has the focus;
//   each move sends the whole order (every city, then every district, as listed) with the
//   page's form #places-order, which htmx posts. A refused order brings the list back as stored.
(function () {
  "use strict";
  var drag = null;

  function items(list) {
    return Array.prototype.filter.call(list.children, function (el) {
      return el.hasAttribute("data-sort-item");
    });
  }

  function say(text) {
    var status = document.getElementById("places-status");
    if (status) status.textContent = text;
  }

  // The handles say where their place is now ("Move Berlin, 2 of 3").
  function relabel(list) {
    var all = items(list);
    all.forEach(function (item, i) {
      var handle = item.querySelector("[data-handle]");
      if (handle) {
        handle.setAttribute(
          "aria-label",
          "Move " + handle.getAttribute("data-name") + ", " + (i + 1) + " of " + all.length
        );
      }
    });
  }

  var lastMoved = null;  // the place whose handle keeps the focus when the list comes back

  function moved(item, list) {
    lastMoved = item.id;
    relabel(list);
    var all = items(list);
    var handle = item.querySelector("[data-handle]");
    var where = all.indexOf(item) + 1 + " of " + all.length;
    say(handle.getAttribute("data-name") + " moved to " + where + "…");
    var form = document.getElementById(list.getAttribute("data-sortable"));
    if (form && window.htmx) window.htmx.trigger(form, "reorder");
  }

  function order(list) {
    return items(list).map(function (el) { return el.id; }).join(",");
  }

  // Follow a row's Edit or a form's Cancel as htmx does, even the moment it arrived.
  function follow(link) {
    if (window.htmx) window.htmx.process(link);
    link.click();
  }

  // Dragging ----------------------------------------------------------------------------------
  document.addEventListener("pointerdown", function (event) {
    var handle = event.target.closest("[data-handle]");
    if (!handle || event.button !== 0 || drag) return;
    var item = handle.closest("[data-sort-item]");
    var list = item && item.parentElement;
    if (!list || !list.hasAttribute("data-sortable")) return;
    event.preventDefault();
    handle.setPointerCapture(event.pointerId);
    drag = { handle: handle, item: item, list: list, pointer: event.pointerId,
             before: order(list), next: item.nextElementSibling };
    item.classList.add("dragging");
    list.classList.add("sorting");
  });

  document.addEventListener("pointermove", function (event) {
    if (!drag || event.pointerId !== drag.pointer) return;
    event.preventDefault();
    var y = event.clientY, target = null;
    var others = items(drag.list).filter(function (el) { return el !== drag.item; });
    for (var i = 0; i < others.length; i++) {
      var box = others[i].getBoundingClientRect();
      if (y < box.top + box.height / 2) { target = others[i]; break; }
    }
    if (drag.item.nextElementSibling !== target) drag.list.insertBefore(drag.item, target);
    // Near the top or bottom of the screen the page scrolls along.
    if (y < 48) window.scrollBy(0, -12);
    else if (y > window.innerHeight - 48) window.scrollBy(0, 12);
  });

  function drop(keep) {
    if (!drag) return;
    var d = drag;
    drag = null;
    d.item.classList.remove("dragging");
    d.list.classList.remove("sorting");
    if (!keep) d.list.insertBefore(d.item, d.next);
    if (order(d.list) !== d.before) moved(d.item, d.list);
    d.handle.focus();
  }

  document.addEventListener("pointerup", function (event) {
    if (drag && event.pointerId === drag.pointer) drop(true);
  });
  document.addEventListener("pointercancel", function (event) {
    if (drag && event.pointerId === drag.pointer) drop(false);
  });

  // The keyboard --------------------------------------------------------------------------------
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") {
      if (drag) { drop(false); event.preventDefault(); return; }
      var form = event.target.closest && event.target.closest("form.place-row, .inline-edit");
      var cancel = form && form.querySelector("a.cancel");
      if (cancel) { follow(cancel); event.preventDefault(); }
      return;
    }
    var handle = event.target.closest && event.target.closest("[data-handle]");
    if (!handle || drag) return;
    var item = handle.closest("[data-sort-item]");
    var list = item.parentElement;
    var all = items(list), i = all.indexOf(item), j = i;
    if (event.key === "ArrowUp") j = i - 1;
    else if (event.key === "ArrowDown") j = i + 1;
    else if (event.key === "Home") j = 0;
    else if (event.key === "End") j = all.length - 1;
    else return;
    event.preventDefault();
    if (j < 0 || j >= all.length || j === i) return;
    list.insertBefore(item, j > i ? all[j].nextElementSibling : all[j]);
    handle.focus();
    moved(item, list);
  });

  // A click on a row opens its form ---------------------------------------------------------------
  document.addEventListener("click", function (event) {
    var row = event.target.closest("[data-edit-row]");
    if (!row || event.target.closest("a, button, input, select, textarea, label, summary")) return;
    if (window.getSelection && String(window.getSelection())) return;  // the owner is copying text
    var edit = row.querySelector("a.edit");
    if (edit) follow(edit);
  });

  // The server's reasons for a refusal (400) are shown where the owner was working.
  var refocus = null;
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.xhr.status === 400 && event.detail.elt.closest("#products, #places")) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
      var from = (event.detail.requestConfig || {}).elt;
      if (from && from.id === "places-order") refocus = lastMoved;
    }
  });

  // Places sent back after a refused order leave the focus on the handle that was moving.
  document.addEventListener("htmx:load", function (event) {
    if (event.target.id !== "places" || !refocus) return;
    var handle = document.querySelector("#" + refocus + " > .place-row [data-handle]");
    refocus = null;
    if (handle) handle.focus();
  });
})();
