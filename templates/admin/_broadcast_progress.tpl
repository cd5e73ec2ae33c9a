% done = progress["sent"] + progress["failed"]
% total = progress["total"] or 1
<div id="progress" class="card" {{!('hx-get="/admin/broadcast/%d" hx-trigger="every 1s" hx-swap="outerHTML"' % progress["id"]) if progress["left"] else ''}}>
  <progress max="{{progress['total']}}" value="{{done}}" aria-label="Broadcast progress"></progress>
  <p><b class="sent">{{progress["sent"]}} sent</b> · <span class="failed">{{progress["failed"]}} failed</span> · <span class="left">{{progress["left"]}} left</span> of {{progress["total"]}}{{" · done" if not progress["left"] else ""}}</p>
</div>
