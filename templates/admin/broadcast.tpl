% rebase('admin/base.tpl', title='Broadcast', section='/admin/broadcast')
<h1>Broadcast</h1>
<form method="post" action="/admin/broadcast" enctype="multipart/form-data" class="card form">
  % include('admin/_csrf.tpl')
  <label>Message to {{recipients}} shopper{{'s' if recipients != 1 else ''}} (shown exactly as typed)
    <textarea name="text" rows="5" required maxlength="4096" hx-get="/admin/broadcast/preview" hx-trigger="input changed delay:300ms" hx-target="#preview" hx-include="this"></textarea></label>
  <label>Photo (optional; the message then becomes its caption, up to 1024 characters) <input type="file" name="photo" accept="image/jpeg,image/png,image/gif,image/webp"></label>
  <div id="preview" class="preview"></div>
  <button type="submit">Send to everyone</button>
</form>
% if recent:
<section class="card"><h2>Recent broadcasts</h2>
  <ul>
  % for b in recent:
  <li><a href="/admin/broadcast/{{b['id']}}">{{b["created_at"][:16].replace("T", " ")}}</a> · {{b["recipients"]}} recipients · {{b["text"][:60]}}</li>
  % end
  </ul>
</section>
% end
