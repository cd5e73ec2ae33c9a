% rebase('admin/base.tpl', title='Audit log', section='/admin/audit')
<h1>Audit log</h1>
<div id="audit">
% include('admin/_audit.tpl')
</div>
