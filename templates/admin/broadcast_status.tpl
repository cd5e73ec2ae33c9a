% rebase('admin/base.tpl', title='Broadcast #%d' % progress['id'], section='/admin/broadcast')
<p><a href="/admin/broadcast">← Broadcast</a></p>
<h1>Broadcast #{{progress["id"]}}</h1>
<div class="bubble tg">{{!preview}}</div>
% include('admin/_broadcast_progress.tpl')
